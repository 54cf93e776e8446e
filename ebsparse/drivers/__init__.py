"""Long-running drivers (front layer): the code that runs a whole experiment on top of the algorithms.

- :mod:`.eb_pipeline` (:class:`~.eb_pipeline.EBRun`): EB-Diff-Train, every stage resumable;
  :mod:`.eb_distributed` its region-parallel phase, :mod:`.eb_report` its table and notes.
- :mod:`.sparse_train`: sparse-to-sparse training (Static/RigL/MagRan-DM) and its summary row.
- :mod:`.checkpoints`: :func:`~.checkpoints.model_from_checkpoint`, the model of any training run.

The commands (:mod:`ebsparse.commands`) call these; nothing below the front layer imports them.
"""
