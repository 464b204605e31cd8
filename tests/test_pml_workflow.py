"""A PML user's workflow: our loss in PML's MetricLossOnly trainer, evaluated with
PML's GlobalEmbeddingSpaceTester and our Recall@K calculator, on a tiny DeiT."""

import pytest
import torch
from pytorch_metric_learning import testers, trainers
from pytorch_metric_learning.samplers import MPerClassSampler

from pml_soproxy import SoftOrthogonalProxyAnchorLoss
from pml_soproxy.evaluation import RecallAtKCalculator
from pml_soproxy.trunks import deit_trunk

TINY_DEIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


class PatternImages(torch.utils.data.Dataset):
    """Each class is a fixed random 32x32 pattern; images are noisy copies of it."""

    def __init__(self, num_classes, per_class, seed):
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.randn(num_classes, 3, 32, 32, generator=generator)
        self.labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = 0.8 * torch.randn(len(self.labels), 3, 32, 32, generator=generator)
        self.images = patterns[self.labels] + noise

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


@pytest.mark.slow
def test_metric_loss_only_trainer_and_tester():
    torch.manual_seed(0)
    num_classes, embedding_size = 6, 16
    dataset = PatternImages(num_classes, per_class=12, seed=0)
    trunk = deit_trunk("deit_tiny_patch16_224", pretrained=False, **TINY_DEIT)
    embedder = torch.nn.Linear(trunk.output_size, embedding_size)
    loss = SoftOrthogonalProxyAnchorLoss(num_classes, embedding_size, so_weight=1.0)
    optimizers = {
        "trunk_optimizer": torch.optim.AdamW(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.AdamW(embedder.parameters(), lr=1e-3),
        "metric_loss_optimizer": torch.optim.AdamW(loss.parameters(), lr=1e-1),
    }
    history = []

    def end_of_iteration_hook(trainer):
        history.append(trainer.losses["metric_loss"].item())

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=24,
        loss_funcs={"metric_loss": loss},
        dataset=dataset,
        sampler=MPerClassSampler(dataset.labels, m=4, length_before_new_iter=72),
        data_device=torch.device("cpu"),
        dataloader_num_workers=0,
        end_of_iteration_hook=end_of_iteration_hook,
    )
    proxies_before = loss.proxies.detach().clone()
    trainer.train(num_epochs=8)

    assert len(history) == 8 * 3
    assert sum(history[-3:]) / 3 < 0.5 * sum(history[:3]) / 3
    assert not torch.equal(proxies_before, loss.proxies.detach())  # optimizer saw them

    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=RecallAtKCalculator(recall_at=(1, 2, 4), device="cpu"),
        data_device=torch.device("cpu"),
        dataloader_num_workers=0,
    )
    held_out = PatternImages(
        num_classes, per_class=6, seed=0
    )  # same classes, new noise
    accuracies = tester.test({"val": held_out}, 8, trunk, embedder)["val"]
    assert accuracies["recall_at_1_level0"] == accuracies["precision_at_1_level0"]
    assert accuracies["recall_at_1_level0"] > 0.9
    assert "mean_average_precision_at_r_level0" in accuracies
