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
# PETS09-S2L1 left out 0.796 on average over three runs of `bench generalize` against 32's 0.769 over
# eleven, TUD-Campus the same (0.804); the bundled student +2.8 points on PETS09-S2L1 398-795 (docs/training.md)
RECIPE_NECK = 64
