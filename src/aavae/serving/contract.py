"""What a served encoder accepts: a batch of images (:func:`check_image_batch`, which the MLflow
model calls on every path), and an HTTP request of MLflow's scoring protocol that carries one
(:class:`ScoringRequest`). A refusal names what was sent (JSON types, dtypes, shapes, at most 40
characters of a key) and never quotes it: a request may hold megabytes of pixels.

Plain NumPy and the json module, no torch: :mod:`aavae.serving.serve` parses each request in
a child process forked from a server that has imported only this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

#: Channel counts an image may have: grey, RGB, RGBA.
CHANNELS = (1, 3, 4)
#: What a served encoder takes, in the words of every refusal.
CONTRACT = "uint8 images, N x H x W x C with C = 1, 3 or 4 (over JSON: integers 0-255)"


class ImageBatchError(ValueError):
    """A batch a served encoder refuses, naming what was sent and what is expected."""


@dataclass(frozen=True)
class InputLimits:
    """Bounds on one call of a served encoder (``registry.*`` at registration), checked before
    any image is resized: the model touches at most ``max_batch_size x max_image_side^2 x 4`` bytes."""

    max_image_side: int
    max_batch_size: int

    def __post_init__(self) -> None:
        for name in ("max_image_side", "max_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_image_batch(images: object, limits: InputLimits) -> np.ndarray:
    """The batch as a uint8 ``N x H x W x C`` array, or :class:`ImageBatchError` with a remedy.

    Integers in 0-255 are accepted too (JSON has no uint8). Floats are refused, whole-number ones
    too: they are often images scaled to [0, 1], which truncated would encode a black image.
    Every check before the value range costs O(1): nothing proportional to the pixels runs for a
    batch refused on its shape (docs/serving.md lists every refusal).
    """
    expected = (f"The encoder takes {CONTRACT}, at most {limits.max_batch_size} images of "
                f"at most {limits.max_image_side} pixels a side")
    _refuse_oversize_sequence(images, limits, expected)
    try:
        array = np.asarray(images)
    except (ValueError, TypeError, OverflowError) as error:  # numpy's words name the shape it found
        text = str(error)
        found = text[text.find("The detected shape"):] if "The detected shape" in text else type(error).__name__
        raise ImageBatchError(
            f"{expected}; got a {type(images).__name__} that is not one N x H x W x C block: images of "
            f"different sizes, or rows of different lengths ({found}); "
            "send images of one size per request (resize them first, or send them one by one)."
        ) from None
    what = "an array" if isinstance(images, np.ndarray) else f"a {type(images).__name__}"
    dtype = f" of {array.dtype}" if array.size else ""  # numpy's dtype of no values says nothing
    sent = f"{what}{dtype} with shape {array.shape}"
    problems = _shape_and_type_problems(array, limits)
    if problems:
        raise ImageBatchError(f"{expected}; got {sent}: {'; '.join(problems)}.")
    if array.dtype != np.uint8:  # integers: the one check that reads every value
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageBatchError(
                f"{expected}; got {sent} with values from {low} to {high}: pixels are 0-255 "
                "(rescale the images to 0-255 and send them as uint8)."
            )
        array = array.astype(np.uint8)
    return array


def _refuse_oversize_sequence(images: object, limits: InputLimits, expected: str) -> None:
    """A list too long, or whose first image is too large, is refused before numpy copies it."""
    if not isinstance(images, (list, tuple)):
        return
    if len(images) > limits.max_batch_size:
        raise ImageBatchError(
            f"{expected}; got a {type(images).__name__} of {len(images)} items: "
            f"{_too_many(len(images), limits)}."
        )
    first: object = images[0] if images else None
    sides: list[int] = []
    while len(sides) < 2:
        if isinstance(first, np.ndarray):
            sides.extend(first.shape[: 2 - len(sides)])
            break
        if not isinstance(first, (list, tuple)) or not first:
            break
        sides.append(len(first))
        first = first[0]
    if any(side > limits.max_image_side for side in sides):
        raise ImageBatchError(
            f"{expected}; got a {type(images).__name__} whose first image has "
            f"{' x '.join(map(str, sides))} pixels: {_too_large(limits)}."
        )


def _shape_and_type_problems(array: np.ndarray, limits: InputLimits) -> list[str]:
    """What is wrong with the batch's dtype and shape; O(1), reads no pixel."""
    if array.ndim >= 1 and array.shape[0] == 0:
        return ["an empty batch: send at least one image"]
    problems = []
    kind = array.dtype.kind if array.size else "u"  # no values (numpy says float64): no type to refuse
    if kind == "f":
        problems.append(
            "floats, which the model does not round or scale (a float image is often in "
            "[0, 1]): send uint8 pixels, e.g. (images * 255).round().astype(numpy.uint8) "
            "for images in [0, 1]"
        )
    elif kind == "b":
        problems.append("booleans: send uint8 pixels (0-255)")
    elif kind in "US":
        problems.append("text: send numbers, uint8 pixels (0-255)")
    elif kind not in "iu":
        problems.append("values that are not all integers (null, objects, complex numbers, "
                        "integers beyond 64 bits): send uint8 pixels (0-255)")
    if array.ndim != 4:
        problems.append(_axes_hint(array.shape))
    else:
        batch, height, width, channels = array.shape
        if channels not in CHANNELS:
            hint = (", or channels first? send images.transpose(0, 2, 3, 1)"
                    if height in CHANNELS else "")
            problems.append(f"{channels} channels, where C must be 1 (grey), 3 (RGB) or "
                            f"4 (RGBA){hint}")
        if batch > limits.max_batch_size:
            problems.append(_too_many(batch, limits))
        if height == 0 or width == 0:
            problems.append("images without pixels")
        elif max(height, width) > limits.max_image_side:
            problems.append(f"images of {height} x {width} pixels: {_too_large(limits)}")
    return problems


def _axes_hint(shape: tuple[int, ...]) -> str:
    if len(shape) == 0:
        return "a single value, not a batch of images"
    if len(shape) == 2:
        return "2 axes: for one grey H x W image send image[None, :, :, None]"
    if len(shape) == 3:
        return ("3 axes: for one H x W x C image send image[None]; for grey N x H x W "
                "images add a channel axis, images[..., None]")
    return f"{len(shape)} axes, where a batch has 4 (N x H x W x C)"


def _too_many(count: int, limits: InputLimits) -> str:
    return (f"{count} images, over this model's max_batch_size of {limits.max_batch_size}: "
            "split them into several requests")


def _too_large(limits: InputLimits) -> str:
    return (f"a side over this model's max_image_side of {limits.max_image_side}: downscale "
            "the images first (the model brings every image to its small training size anyway)")


RETURN_MU = "return_mu"
INPUT_KEYS = ("inputs", "instances")
PARAMS = "params"
BAD_REQUEST, INVALID_PARAMETER_VALUE = "BAD_REQUEST", "INVALID_PARAMETER_VALUE"  # MLflow's codes
EXAMPLE = '{"inputs": <uint8 images as nested lists>, "params": {"return_mu": false}}'


class RequestError(ValueError):
    """A request refused with an HTTP ``status`` and MLflow's ``code``; the message is one line."""

    def __init__(self, message: str, status: int = 400, code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def __reduce__(self) -> tuple:  # crosses the pipe from the parsing process whole
        return type(self), (str(self), self.status, self.code)


@dataclass(frozen=True)
class ScoringRequest:
    """A request the encoder will answer: its checked images and whether ``mu`` is wanted."""

    images: np.ndarray  # uint8 N x H x W x C, within the model's limits
    return_mu: bool = False

    @classmethod
    def parse(cls, body: bytes, limits: InputLimits) -> ScoringRequest:
        """Read a JSON body, or raise :class:`RequestError` saying what is wrong and what to send."""
        try:
            payload = json.loads(body)
        except RecursionError:
            raise RequestError(f"The request body is JSON nested deeper than this server's parser "
                               f"reads: send {EXAMPLE}.") from None
        except ValueError as error:  # not JSON, not UTF-8, an integer of more than 4,300 digits
            reason = str(error).split(";")[0][:120]
            raise RequestError(f"The request body is not JSON this server reads ({reason}): "
                               f"send {EXAMPLE}.") from None
        if not isinstance(payload, dict):
            raise RequestError(f"The request body is a JSON {_json_type(payload)}: send {EXAMPLE}.")
        given = [key for key in INPUT_KEYS if key in payload]
        unknown = [key for key in payload if key not in (*INPUT_KEYS, PARAMS)]
        if len(given) != 1 or unknown:
            what = f"keys {_names(unknown)}" if unknown else f"{len(given)} of inputs and instances"
            raise RequestError(f"The request has {what}: send one JSON object {EXAMPLE}.")
        return_mu = _return_mu(payload.get(PARAMS))
        try:
            return cls(check_image_batch(payload[given[0]], limits), return_mu)
        except ImageBatchError as error:
            raise RequestError(str(error), code=INVALID_PARAMETER_VALUE) from None


def _return_mu(params: object) -> bool:
    """The one parameter the encoder takes; anything else is refused, not ignored."""
    if params is None:
        return False
    if not isinstance(params, dict):
        raise RequestError(f"params is a JSON {_json_type(params)}: send an object such as "
                           '{"return_mu": true}, or leave params out.', code=INVALID_PARAMETER_VALUE)
    unknown = [key for key in params if key != RETURN_MU]
    if unknown:
        raise RequestError(f"params has {_names(unknown)}, which this model does not take: its one "
                           "parameter is return_mu (true or false).", code=INVALID_PARAMETER_VALUE)
    value = params.get(RETURN_MU, False)
    if not isinstance(value, bool):
        raise RequestError(f"params return_mu is a JSON {_json_type(value)}: send true or false.",
                           code=INVALID_PARAMETER_VALUE)
    return value


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(key if len(key) <= 40 else key[:37] + "...") for key in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def parse_in_child(connection: Connection, limits: InputLimits) -> None:
    """A parsing process's work: a body in, its :class:`ScoringRequest` or :class:`RequestError` out."""
    body = connection.recv_bytes()
    try:
        connection.send(ScoringRequest.parse(body, limits))
    except RequestError as error:
        connection.send(error)
