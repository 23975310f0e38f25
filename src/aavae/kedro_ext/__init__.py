"""What this project adds to Kedro: catalog datasets, hooks, the catalog of a torchrun rank and
the lock that keeps two pretraining runs off one checkpoint folder."""
