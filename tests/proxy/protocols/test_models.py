"""The names a vendor's client may give the model."""

from __future__ import annotations

from proxy.protocols.models import ModelNames

VENDOR = ("vendor-model-a", "vendor-model-b")


def test_lenient_names_accept_the_served_name_the_aliases_and_the_vendors() -> None:
    names = ModelNames.of("served", ("alias",), strict=False, vendor=VENDOR)
    for name in ("served", "alias", *VENDOR):
        assert names.accepts(name)
    assert not names.accepts("other")
    assert names.listed() == "served, alias, vendor-model-a, vendor-model-b"


def test_strict_names_leave_the_vendors_out() -> None:
    names = ModelNames.of("served", ("alias",), strict=True, vendor=VENDOR)
    assert names.accepts("served")
    assert names.accepts("alias")
    assert not any(names.accepts(name) for name in VENDOR)
    assert names.listed() == "served, alias"
