"""What every layer uses and that knows nothing of the rest of the project.

* :mod:`.progress` -- progress of long work: a bar on a terminal, plain lines in a log.
* :mod:`.hardware` -- every ``auto`` choice of device and precision.
* :mod:`.weights` -- the one weights-only reader of torch files.
* :mod:`.atomic` -- files and folders written whole or not at all, with the umask's modes.
* :mod:`.liveness` -- temporary names of writers, and whether their process still lives.
* :mod:`.provenance` -- fingerprints of what an artifact was made from, and the checks on them.
* :mod:`.quiet` -- library warnings a user cannot act on, filtered by their exact text.
* :mod:`.records` -- strict validated records (pydantic), and reading a stored one back whole.
"""
