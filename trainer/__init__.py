"""The continual-training cluster: teacher labelling, async parameter-server training, evaluation, registry publishing."""
