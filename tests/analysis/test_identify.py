"""rws.analysis.identify: leave-one-out identification on real signatures, and its errors."""

from __future__ import annotations

import pytest

from rws.analysis.identify import identify
from rws.analysis.library import SignatureLibrary
from rws.errors import IntegrityError, UnknownNameError, UsageError
from tests.analysis.conftest import HandPatch, Signatures
from tests.methods.test_rws import CORRUPTIONS


@pytest.mark.parametrize("method", ["centroid", "knn", "logistic"])
def test_identify_leave_one_out(method: str, signatures: Signatures) -> None:
    library = SignatureLibrary.from_patches(list(signatures.values()))
    for (c, _), patch in signatures.items():
        res = identify(patch, library.without(patch), method=method)
        assert res.corruption == c, (method, c, res.ranking)
        assert res.confidence == res.ranking[0][1] > 1 / len(CORRUPTIONS)
        assert res.nearest[0].startswith(c) and res.tensors == 9  # weights: no running stats
        assert sum(p for _, p in res.ranking) == pytest.approx(1.0)
        with_stats = identify(patch, library.without(patch), method=method, running_stats=True)
        assert with_stats.tensors == 15 and with_stats.corruption == c


def test_identify_errors(hand_patch: HandPatch) -> None:
    a = hand_patch("a", l1_weight=[[1.0, 0.0]])
    lib = SignatureLibrary.from_patches([a], corruptions=["fog"])
    assert identify(a, lib).corruption == "fog"  # one class: certain
    with pytest.raises(UnknownNameError, match="unknown identification method 'svm'"):
        identify(a, lib, method="svm")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="library is empty"):
        identify(a, lib.without(a))
    with pytest.raises(IntegrityError, match="shares no tensor"):
        identify(hand_patch("b", l9_weight=[[1.0]]), lib)
    with pytest.raises(UsageError, match="neighbors 0: must be at least 1"):
        identify(a, lib, neighbors=0)
    with pytest.raises(UsageError, match=r"temperature 0\.0: must be positive"):
        identify(a, lib, temperature=0.0)
