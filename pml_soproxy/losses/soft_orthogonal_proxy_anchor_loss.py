import numbers

import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss

from ..regularizers.soft_orthogonality_regularizer import (
    SoftOrthogonalityRegularizer,
    at_least_float32,
    autocast_disabled,
)


# Proxy Anchor loss plus a soft orthogonality penalty on the proxies:
# "Deep Metric Learning with Soft Orthogonal Proxies", https://arxiv.org/abs/2306.13055
# so_weight is PML's weight_reg_weight under a descriptive name.
class SoftOrthogonalProxyAnchorLoss(ProxyAnchorLoss):
    def __init__(
        self,
        num_classes,
        embedding_size,
        margin=0.1,
        alpha=32,
        so_weight=1.0,
        weight_regularizer=None,
        **kwargs
    ):
        check_positive_int("num_classes", num_classes)
        check_positive_int("embedding_size", embedding_size)
        if "weight_reg_weight" in kwargs:
            raise ValueError(
                "so_weight is the weight of the regularizer; do not pass weight_reg_weight too"
            )
        if weight_regularizer is None and so_weight != 0:
            weight_regularizer = SoftOrthogonalityRegularizer(
                collect_stats=kwargs.get("collect_stats")
            )
        super().__init__(
            num_classes,
            embedding_size,
            margin=margin,
            alpha=alpha,
            weight_regularizer=weight_regularizer,
            weight_reg_weight=so_weight,
            **kwargs
        )
        self.embedding_size = embedding_size
        self.so_weight = so_weight
        self.add_to_recordable_attributes(name="so_weight", is_stat=False)

    def forward(
        self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None
    ):
        self.check_shapes(embeddings, labels)
        self.check_labels(labels)
        # fp16 logits overflow in exp(alpha * (cos + margin)), PML would cast the
        # proxies themselves to the embeddings' dtype, and its reducers sum the
        # sub-losses in that dtype: compute everything in at least float32.
        with autocast_disabled(embeddings.device.type):
            return super().forward(
                at_least_float32(embeddings), labels, indices_tuple, ref_emb, ref_labels
            )

    def check_shapes(self, embeddings, labels):
        # shapes only: no device-to-host synchronization
        if embeddings.ndim != 2:
            raise ValueError(
                "embeddings must be a 2D tensor of shape (batch_size, embedding_size), "
                "got shape {}".format(tuple(embeddings.shape))
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                "embeddings have {0} dimensions but the loss was built with "
                "embedding_size={1}; build the loss with embedding_size={0} or add an "
                "embedder that outputs {1}".format(
                    embeddings.shape[1], self.embedding_size
                )
            )
        if labels is None:
            return
        if labels.ndim != 1:
            raise ValueError(
                "labels must be a 1D tensor of shape (batch_size,), got shape {}".format(
                    tuple(labels.shape)
                )
            )
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                "got {} embeddings but {} labels; pass one label per embedding".format(
                    embeddings.shape[0], labels.shape[0]
                )
            )

    def check_labels(self, labels):
        if labels is None:
            return
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                "labels must be integer class indices, got dtype {}".format(
                    labels.dtype
                )
            )
        out_of_range = (labels < 0) | (labels >= self.num_classes)
        if torch.any(out_of_range):
            bad_label = labels[out_of_range][0].item()
            raise ValueError(
                "label {} is outside [0, num_classes) with num_classes={}; labels must "
                "be 0-based class indices".format(bad_label, self.num_classes)
            )


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError("{} must be an integer >= 1, got {!r}".format(name, value))
