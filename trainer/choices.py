"""The trainer's named choices and defaults that the CLI offers as flags: kept free of torch and Ray, so
that ``pedstream --help`` and the edge roles, which must run without either, can show them."""

from __future__ import annotations

TRAINING_MODES = ("async", "sync")  # trainer.job: asynchronous parameter-server updates, or synchronous rounds
MOBILENETV2_STEM = "mobilenetv2"  # StudentConfig.stem: the pretrained trunk's own blocks 0-2
DISTILLED_STEM = "distilled"  # StudentConfig.stem: a cheaper stem distilled from those blocks (trainer.stem)
STEMS = (MOBILENETV2_STEM, DISTILLED_STEM)
# a camera's own model gets a larger input until the median teacher-labelled person is this many pixels
# tall at it (trainer.input_size; RetrainPolicy.person_px)
PERSON_PX = 48.0
WARMUP_UPDATES = 20  # JobSettings.warmup: updates of linear learning-rate warm-up before the cosine decay
# student v1.3's neck and head channels (StudentConfig.neck, whose default 32 is v1.2's and older models'):
# TUD-Campus left out scored 0.805-0.812 in four runs, v1.2 0.773-0.848 in sixteen (docs/training.md)
RECIPE_NECK = 64
