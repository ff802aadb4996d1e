"""Domain errors: every failure a user can cause or meet has a type, a code and a message."""


class LookalikeError(Exception):
    """Base of all domain errors; `code` is a stable machine-readable name."""

    code = "error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(LookalikeError):
    """The bytes are not an image we can embed."""

    code = "invalid_image"
    http_status = 400


class NotAnImage(InvalidImage):
    code = "not_an_image"


class TruncatedImage(InvalidImage):
    code = "truncated_image"


class UndecodableImage(InvalidImage):
    """The header is sound but the pixel data cannot be decoded: only a worker's full decode
    finds it, so the upload is accepted and its task fails."""

    code = "undecodable_image"


class ImageTooLarge(InvalidImage):
    code = "image_too_large"
    http_status = 413


class UnsupportedImageFormat(InvalidImage):
    code = "unsupported_image_format"
    http_status = 415


class WeightsUnavailable(LookalikeError):
    """The model cannot run here: no weights, or its backend or decoder is missing."""

    code = "weights_unavailable"
    http_status = 503


class SnapshotError(LookalikeError):
    """An index snapshot is missing, partial or corrupt."""

    code = "snapshot_error"


class ModelMismatch(LookalikeError):
    """Vectors from a different model (weights, pooling, preprocessing) than the index's."""

    code = "model_mismatch"
    http_status = 409


class InvalidVector(LookalikeError, ValueError):
    """A vector cosine similarity is undefined for: all zeros, NaN or infinite values."""

    code = "invalid_vector"
    http_status = 400


class DimensionMismatch(LookalikeError):
    code = "dimension_mismatch"
    http_status = 400


class RedisUnavailable(LookalikeError):
    """No Redis server can be found, started or reached."""

    code = "redis_unavailable"
    http_status = 503


# EX_CONFIG from sysexits.h: a process that cannot run as configured (no model weights, say)
# exits with it, and a supervisor must not restart it.
EXIT_CONFIG = 78
