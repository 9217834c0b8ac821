"""What the Kling layer tells members and operators comes from the catalogue (``kling.po``)."""

from __future__ import annotations

import pytest

from bot.kling import errors
from bot.kling.images import ImageRejected, prepare_image
from bot.text import catalogue_keys, t


def _error_classes() -> list[type[errors.KlingError]]:
    found, todo = [], [errors.KlingError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_each_kling_error_tells_members_a_catalogue_sentence(cls: type[errors.KlingError]) -> None:
    assert cls.text_key in catalogue_keys("en")
    assert cls.user_message == t(cls.text_key) == cls("Kling's own words").user_message
    assert cls.user_message.endswith(".")


def test_an_instance_may_carry_its_own_sentence() -> None:
    error = errors.KlingBillingError("arrears", code=1101)
    error.user_message = "The account is locked."
    assert error.user_message == "The account is locked."
    assert errors.KlingBillingError.user_message == t("kling.error.billing")


def test_a_refused_image_reads_from_the_catalogue() -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(b"%PDF-1.7 not an image", "subject2")
    reason = t("kling.image.not_an_image_but", kind=t("kling.image.kind.pdf"))
    hint = t("kling.image.hint.formats")
    assert (caught.value.reason, caught.value.hint) == (reason, hint)
    assert str(caught.value) == f"subject2: {reason}. {hint}"
    assert str(caught.value) == (
        "subject2: this file is not an image (it looks like a PDF). "
        "Attach a JPEG, PNG, WebP or GIF."
    )
