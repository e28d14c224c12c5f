"""The criteria builder's page (audiences/admin_builder.py): the widget hands the script the one vocabulary,
and criteria without any condition are saved only once confirmed."""

from __future__ import annotations

import json

import pytest

from audiences.admin_builder import OPERATOR_LABELS, builder_vocabulary, value_kind
from audiences.criteria import vocabulary
from audiences.models import Audience

pytestmark = pytest.mark.django_db
ADD_URL = "/admin/audiences/audience/add/"


def post_audience(client, criteria: dict, **extra: str):
    data = {"name": "Everybody", "external_name": "", "description": "", "status": "draft"}
    return client.post(ADD_URL, {**data, "criteria": json.dumps(criteria), **extra})


def test_every_operator_of_the_vocabulary_has_words_and_an_input():
    assert set(OPERATOR_LABELS) == set(vocabulary.OPERATORS)
    for operator in vocabulary.OPERATORS:
        assert value_kind(operator)  # raises for an operator the builder cannot draw
    config = builder_vocabulary(audience_id=None)
    assert [op["value"] for op in config["operators"]] == list(OPERATOR_LABELS)
    assert {op["value"] for op in config["identity_operators"]} == set(vocabulary.IDENTITY_OPERATORS)
    assert {op["value"] for op in config["frequency_operators"]} == set(vocabulary.FREQUENCY_OPERATORS)
    assert config["default_recency"] == vocabulary.DEFAULT_RECENCY
    assert [u["value"] for u in config["units"]] == list(vocabulary.WINDOW_UNITS)


def test_the_add_page_carries_the_builder_and_its_vocabulary(admin_client):
    html = admin_client.get(ADD_URL).content.decode()
    assert "audiences/criteria_builder.js" in html and 'id="id_criteria-builder-config"' in html
    assert "Potential Parisians" in html  # the help's example
    assert "compiled once into nested closures" not in html  # no developer's help any more


def test_criteria_without_a_condition_are_refused_unless_confirmed(admin_client):
    refused = post_audience(admin_client, {"and": []})
    assert refused.status_code == 200
    assert "the audience would hold every profile" in refused.context["adminform"].form.errors["criteria"][0]
    nobody = post_audience(admin_client, {"or": []})
    assert "the audience would hold nobody" in nobody.context["adminform"].form.errors["criteria"][0]
    assert not Audience.objects.exists()
    confirmed = post_audience(admin_client, {"and": []}, confirm_everybody="on")
    assert confirmed.status_code == 302
    assert Audience.objects.get().criteria == {"and": []}
    # With a condition, nothing to confirm.
    with_condition = {"attribute": "status", "operator": "exists"}
    assert post_audience(admin_client, with_condition, name="Some").status_code == 302
