"""Pure numpy fusion functions: client knowledge in, fused knowledge out (no Flower)."""

from fedkd.fusion.class_logits import class_mean, leave_one_out
from fedkd.fusion.knfu import divergence_matrix, epd, fusion_weights, personalised_fusion
from fedkd.fusion.prototypes import prototype_mean
from fedkd.fusion.public import era, public_mean, sharpen_entropy, softmax
from fedkd.fusion.reduce import (
    REDUCERS,
    gated_mean,
    mean,
    median,
    per_class_reduce,
    reduce,
    trimmed_mean,
)
from fedkd.fusion.vote import (
    consensus,
    first_choice_counts,
    plurality,
    topk_vote_counts,
    vote_counts,
)

__all__ = [
    "REDUCERS",
    "class_mean",
    "divergence_matrix",
    "epd",
    "era",
    "fusion_weights",
    "gated_mean",
    "leave_one_out",
    "mean",
    "median",
    "per_class_reduce",
    "personalised_fusion",
    "prototype_mean",
    "public_mean",
    "reduce",
    "sharpen_entropy",
    "softmax",
    "trimmed_mean",
    "vote_counts",
    "plurality",
    "consensus",
    "first_choice_counts",
    "topk_vote_counts",
]
