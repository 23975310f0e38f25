"""What a person looks at: figures (:mod:`.plots`), the printed results table
(:mod:`.report`, ``python -m aavae.reporting.report``) and the one-page HTML report
(:mod:`.report_html`). Plain matplotlib and HTML: nothing here trains or reads a catalog."""
