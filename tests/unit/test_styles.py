from pathlib import Path

import pytest

from cli.main import main
from cli.styles import StylesError, count_rows, read_styles

HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text(HEADER + body)
    return path


def test_unquoted_commas_stay_in_the_name(tmp_path):
    path = write(
        tmp_path,
        "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,"
        "Turtle Check Men Navy Blue Shirt\n"
        "39386,Men,Footwear,Shoes,Sports Shoes,Black,Summer,2012,Sports,"
        "Puma Men's Black, Grey Shoes, Size 9\n",
    )
    rows = list(read_styles(path))
    assert [row.product_id for row in rows] == ["15970", "39386"]
    assert rows[1].metadata["productDisplayName"] == "Puma Men's Black, Grey Shoes, Size 9"
    assert rows[1].metadata["articleType"] == "Sports Shoes"


def test_empty_fields_stay_empty_strings(tmp_path):
    path = write(tmp_path, "1,Women,Apparel,Dress,Dresses,Red,,2014,,\n")
    (row,) = read_styles(path)
    assert row.metadata["season"] == ""
    assert row.metadata["usage"] == ""
    assert row.metadata["productDisplayName"] == ""


def test_short_rows_are_padded_and_quoted_names_are_kept(tmp_path):
    path = write(tmp_path, '2,Men,Apparel\n3,Men,A,B,C,D,E,2015,F,"Quoted, name"\n')
    rows = list(read_styles(path))
    assert rows[0].metadata["articleType"] == ""
    assert rows[1].metadata["productDisplayName"] == "Quoted, name"
    assert count_rows(path) == 2


def test_wrong_header_is_refused(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(StylesError, match="the header must start with id,gender"):
        list(read_styles(path))


@pytest.mark.parametrize(
    "content",
    ["", "product,name\n1,x\n", "id,gender\n", HEADER.replace("articleType", "type")],
    ids=["empty", "other-columns", "short", "renamed-column"],
)
def test_import_of_a_wrong_styles_file_is_one_clear_error_without_traceback(
    tmp_path, capsys, content
):
    (tmp_path / "styles.csv").write_text(content)
    # Nothing listens on port 9: the header is refused before the API is asked anything.
    code = main(["import", str(tmp_path), "--api-url", "http://127.0.0.1:9", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'styles.csv'}: the header must start with "
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
        "productDisplayName\n"
    )
