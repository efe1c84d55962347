"""The trained model: the artefacts between training, inference and model selection.

A shared home below ``trainers``, ``inference`` and ``evaluation`` (all three read it, none of
them owns it): the fold's settings (:class:`~autoseg.model.training_config.TrainingConfig`),
the checkpoint format, the loaded :class:`~autoseg.model.trained.TrainedModel`, postprocessing
rules, saved probabilities, the model-selection choice (``best_configuration.json``) and the
model zip.
"""
