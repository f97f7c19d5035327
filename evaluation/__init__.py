"""The evaluation engine shared by LOSO fine-tuning (`fine-tune_CVSCL.py`) and the k-fold linear
probe (`LinearProbing_CVSCL_10fold.py`). Each script's `main` shows its protocol's loop; the steps
live here, one concern per module:

    options.py   every flag the engine reads, and the defaults that depend on the checkpoint
    engine.py    the protocol and the unit loop's steps: Inputs, set_model, set_optimizer, train,
                 reestimate_batch_norm, predict, and EvaluationRun, which runs the pending units
    runs.py      the run folder and its record, unit files, shards, run names
    metrics.py   acc / UF1 / UAR of pooled predictions, their bootstrap intervals, aggregation, plots

A unit (a LOSO subject or a k-fold fold) trains a fresh classifier for a fixed number of epochs (no
model or epoch is chosen on test data) and predicts its test samples; UF1 and UAR are computed once
on the predictions of all units pooled (MEGC convention).
"""
