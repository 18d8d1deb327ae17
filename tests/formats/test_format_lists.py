"""Issue 15: ``lut[...]`` formats in comma lists (the commas inside the brackets belong to the grid)."""

from __future__ import annotations

import pytest

from qscale.formats import expand_formats


def test_lut_formats_in_a_comma_list():
    assert expand_formats("int4, lut[-1,-0.5,0,0.5,1]-g32, nf4") == [
        "int4-pc",
        "lut[-1.0,-0.5,0.0,0.5,1.0]-g32",
        "nf4-g64",
    ]
    assert expand_formats(["lut[-1,0,1]", "lut[-1,0,1]-g64,int8"]) == ["lut[-1.0,0.0,1.0]-g64", "int8-pc"]


def test_a_bad_lut_in_a_list_still_names_the_grid():
    with pytest.raises(Exception, match="strictly increasing"):
        expand_formats("int4,lut[1,0]")


def test_page_sends_the_format_list_unsplit():
    from pathlib import Path

    import qscale.service

    js = (Path(qscale.service.__file__).parent / "static" / "app.js").read_text()
    assert "fs.split(','" not in js
