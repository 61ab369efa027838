"""Error types with one-line messages that name what is wrong and where.

Every user-facing failure in fedkd raises one of these, so launchers can print
``str(err)`` as a single line and exit 1 without a traceback.
"""


class FedkdError(ValueError):
    """Base class: a problem with user input (config, data files, payloads)."""


class ConfigError(FedkdError):
    """An invalid or inconsistent configuration value."""


class DataError(FedkdError):
    """A dataset, data file or split that cannot be used as asked."""


class PayloadError(FedkdError):
    """A knowledge payload that fails validation (shape, dtype, range, NaN/Inf).

    ``reason`` is a short code (one of :data:`REJECT_REASONS`) under which the
    server counts the rejected reply (``rejected_replies`` in the metrics).
    """

    def __init__(self, message: str, reason: str = "invalid_payload") -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointError(FedkdError):
    """A checkpoint that cannot be read, or does not belong to the run being resumed."""


# Why a reply was rejected (the keys of ``rejected_replies``). Payload reasons first.
REJECT_REASONS = {
    "bad_metrics": "no metrics record, or a metric outside the schema (fedkd/metrics_schema.py)",
    "malformed": (
        "the knowledge record cannot be decoded (unknown kind, missing keys or meta, a .npy "
        "header that lies about its size, bad encoded fields, any error while reading it)"
    ),
    "wrong_kind": "not the payload kind (or value space) the strategy expects",
    "shape": "an array has the wrong number of dimensions or rows",
    "dtype": "an array has a dtype the payload does not allow",
    "class_count": "the class axis does not match the run's number of classes",
    "index_range": "public-set indices out of range, repeated, or not the ones requested",
    "non_finite": "NaN or Inf, or float64 values beyond float32's range",
    "value_range": (
        "probabilities outside [0, 1] or not summing to 1, negative counts, bad class ids, "
        "values or counts beyond bounds.*"
    ),
    "too_large": "the reply is larger than server.max_payload_bytes",
    "invalid_payload": "any other payload check",
    "client_error": "the ClientApp raised (Flower error reply)",
    "client_unavailable": "the node was unavailable (Flower error reply NODE_UNAVAILABLE)",
    "no_reply": "no reply within server.round_timeout",
}
PAYLOAD_REASONS = tuple(r for r in REJECT_REASONS if not r.startswith(("client_", "no_")))
