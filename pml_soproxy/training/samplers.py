"""PML's M-per-class sampler with its order in the checkpoint.

``MPerClassSampler`` shuffles its own list of labels in place at every batch, so the
order it starts an epoch with depends on every epoch before. ``state_dict`` /
``load_state_dict`` carry that order, which ``--resume`` needs to reproduce the
uninterrupted run (its random draws come from PML's ``c_f.NUMPY_RANDOM``, which the
checkpoint restores separately).
"""

from pytorch_metric_learning.samplers import MPerClassSampler


class ResumableMPerClassSampler(MPerClassSampler):
    def state_dict(self):
        return {"labels": [int(label) for label in self.labels]}

    def load_state_dict(self, state):
        by_value = {int(label): label for label in self.labels}
        if sorted(by_value) != sorted(state["labels"]):
            raise ValueError("the sampler state is for another set of classes")
        self.labels = [by_value[int(label)] for label in state["labels"]]
