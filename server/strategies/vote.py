"""``vote``: alignment voting for heterogeneous models (FedKA's federated voting as a
knowledge exchange; docs/algorithms.md §2.3 step 4, §2.5, §4.7).

Clients upload only labels: their top-k classes (``top_k``, argmax by default) on a
per-round subset of the public set (the unlabelled target domain when
``split.target_domain`` is set). The server counts the votes and releases a label
where the share of clients agreeing reaches ``voting.threshold``, optionally through
PATE's GNMax / Confident-GNMax with client-level ε accounted per query
(:class:`fedkd.privacy.label_release.LabelVoting`). Next round, every client distils on
the released labels (one-hot targets, soft-target cross-entropy) before its local
training. Nothing else is exchanged, so any mix of architectures works.

Logged per round: ``answered_share`` (released / queried), ``vote_agreement`` (mean
noise-free share of voters on the plurality label), ``voting_acc`` (released labels
against the public samples' held-back labels; diagnostics only, never sent) and, with
noise, ``gnmax_epsilon`` (cumulative client-level GNMax epsilon; ``privacy.vote_epsilon`` is
the local mod's per-label randomized response, another thing). Ours: the one-round lag of :class:`PublicSetStrategy`, and
one-hot targets with ``soft_ce`` (equal to hard-label CE) so the client's distillation
step is shared with the other public-set methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedkd.client.runtime import data_key, federated_data
from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import first_choice_counts, vote_counts
from fedkd.knowledge import PublicLogits, Votes
from fedkd.plan import ExtractSpec, Plan
from fedkd.privacy.accounting import Release
from fedkd.privacy.label_release import LabelVoting, VoteRelease
from server.strategies.public import PublicSetStrategy
from server.strategies.registry import STRATEGIES


def voting_diagnostics(
    release: VoteRelease, true_labels: np.ndarray | None, voting: LabelVoting
) -> dict[str, float]:
    """What a round of label voting did: share answered, agreement, accuracy, ε."""
    answered = release.answered
    out = {
        "answered_share": float(answered.mean()) if len(answered) else 0.0,
        "vote_agreement": float(release.agreement.mean()) if len(answered) else 0.0,
        "pseudo_labels": float(answered.sum()),
    }
    if true_labels is not None and answered.any():
        out["voting_acc"] = float((release.labels[answered] == true_labels[answered]).mean())
    if voting.private:
        out["gnmax_epsilon"] = voting.epsilon()  # cumulative, client-level (not per label)
    return out


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


@STRATEGIES.register("vote")
class Vote(PublicSetStrategy):
    name = "vote"
    bookkeeping = ("gnmax",)  # the GNMax query counts (the releases are the run ledger's)
    streams = {"vote_noise": 3}

    def setup(self) -> None:
        super().setup()
        self.top_k = int(self.params["top_k"])
        if self.top_k > self.info.num_classes:
            raise ConfigError(
                f"strategy.top_k={self.top_k} exceeds the {self.info.num_classes} classes"
            )
        self.voting = LabelVoting.from_config(
            self.params["voting"], votes_per_teacher=self.top_k, ledger=self.ledger
        )
        self.public_y = federated_data(data_key(self.cfg)).public_y  # diagnostics only

    def vote_round_bound(self) -> list[Release]:
        return self.voting.round_bound(self.size)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gnmax": self.voting.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.voting.recorder.load_state_dict(state["gnmax"])

    def plan(self, server_round: int) -> Plan:
        return Plan(
            distill=self.default_distill(self.params["distill_loss"]),
            extract=ExtractSpec(Votes.kind, top_k=self.top_k),
        )

    def check_upload(self, server_round: int, client_id: int, payload: Votes) -> None:
        if payload.votes.shape[1] != self.top_k:
            raise PayloadError(
                f"expected top-{self.top_k} votes, got {payload.votes.shape[1]}", "shape"
            )
        if not np.array_equal(payload.indices, self.indices_for(server_round)):
            raise PayloadError(
                "uploaded public-set indices differ from the ones requested this round",
                "index_range",
            )

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        ids = sorted(uploads)
        indices = self.indices_for(server_round)
        votes = np.stack([uploads[i].votes for i in ids])
        counts = vote_counts(votes, self.info.num_classes)
        rng = self.random.noise_rng_for(server_round, "vote_noise")
        # a tie between classes is broken by the clients' first choices (the ranking)
        first = first_choice_counts(votes, self.info.num_classes) if self.top_k > 1 else None
        release = self.voting.release(counts, len(ids), rng, tiebreak=first)
        answered = release.answered
        self.targets = (
            PublicLogits(
                indices=indices[answered],
                values=one_hot(release.labels[answered], self.info.num_classes),
                space="probs",
            )
            if answered.any()
            else None  # nothing released: clients skip distillation next round
        )
        truth = None if self.public_y is None else self.public_y[indices]
        return voting_diagnostics(release, truth, self.voting)
