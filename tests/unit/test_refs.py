import pytest

from registry.errors import InvalidReference
from registry.refs import ModelRef, check_alias, parse_ref


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tiny-llama/3", ModelRef("tiny-llama", version="3")),
        ("tiny-llama@champion", ModelRef("tiny-llama", alias="champion")),
        ("team/tiny-llama/12", ModelRef("team/tiny-llama", version="12")),
        ("team/tiny@challenger", ModelRef("team/tiny", alias="challenger")),
    ],
)
def test_parses_versions_and_aliases(text, expected):
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize("text", ["tiny-llama", "tiny-llama/", "tiny-llama/latest", "@champion", "tiny@", "/3"])
def test_rejects_what_is_not_a_reference_and_shows_the_forms(text):
    with pytest.raises(InvalidReference) as error:
        parse_ref(text)
    assert "NAME/VERSION" in str(error.value) and "NAME@ALIAS" in str(error.value)


@pytest.mark.parametrize("alias", ["latest", "v3", "V12", "1abc", "has space", ""])
def test_refuses_aliases_mlflow_reserves_or_cannot_store(alias):
    with pytest.raises(InvalidReference):
        check_alias(alias)


def test_accepts_release_roles():
    for alias in ("champion", "challenger", "previous", "canary_2"):
        assert check_alias(alias) == alias
