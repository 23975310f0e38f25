"""What this project adds to Kedro: catalog dataset classes (:mod:`.datasets`), hooks that
open MLflow runs and check parameters (:mod:`.hooks`), the catalog of a torchrun rank
(:mod:`.distributed_catalog`) and the lock that keeps two pretraining runs off one
checkpoint folder (:mod:`.pretrain_lock`)."""
