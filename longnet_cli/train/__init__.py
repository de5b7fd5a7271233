"""Training: the stage and its components, each with one job (and its own recipe section).

trainer.py       the stage: ``train()``, ``check_inputs()``, the run's set-up step by step
loop.py          the training loop (one screen of calls to the components below)
loss.py          LanguageModelLoss: the chunked next-token loss as DDP's module
schedule.py      the learning rate of every step (train.*) and the AdamW optimizer
evaluation.py    evaluation during training (eval.*) on the evaluate scorer's Stats
metrics.py       metrics.jsonl, trackers (log.*), throughput and mfu
checkpointer.py  writing checkpoints (checkpoint.*) and what their state.json records
resume.py        the run-directory and resume policy, corpus record, window scheme
distributed.py   rank layout (parallel.*), the run lock, rank agreement, signals
launch.py        starting one worker process per device (``longnet train --devices``)
sharding.py      parallel.shard: fsdp, the model sharded over every rank (FSDP2), clipping
init_from.py     starting a new run from trained weights (train.init_from)
"""
