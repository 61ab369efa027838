"""One table of TensorBoard tags: namespaced, server aggregates under their own names."""

from __future__ import annotations

import pytest

from server.tags import client_tag, mapping_tag, server_tag


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("global_test_acc", "accuracy/global_test"),
        ("local_test_acc", "accuracy/local_test"),
        ("train_loss", "loss/train"),
        ("local_test_loss", "loss/local_test"),
        ("bytes_up", "traffic/bytes_up"),
        ("client_time", "time/client_s"),
        ("epsilon", "privacy/epsilon"),  # a metric the table does not list: named by its words
        ("proto_acc", "accuracy/proto"),
        ("something_new", "other/something_new"),
        ("privacy/already_namespaced", "privacy/already_namespaced"),
    ],
)
def test_client_tags(key, tag):
    assert client_tag(key) == tag


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("global_test_acc", "accuracy/global_test_mean"),
        ("global_test_acc_std", "accuracy/global_test_std"),
        ("local_test_acc_min", "accuracy/local_test_min"),
        ("honest_local_test_acc", "accuracy/local_test_honest_mean"),
        ("bytes_down", "traffic/bytes_down_total"),
        ("round_time_s", "time/round_s"),
        ("participants", "clients/participants"),
    ],
)
def test_server_tags_never_reuse_a_client_tag(key, tag):
    assert server_tag(key) == tag
    assert server_tag(key) != client_tag(key)


def test_server_only_metrics_get_a_namespace():
    assert server_tag("teacher_entropy") == "fusion/teacher_entropy"
    assert server_tag("rejected_clients") == "clients/rejected_clients"


def test_mapping_values_nest_under_their_key():
    assert mapping_tag("rejected_replies", "nan") == "clients/rejected_replies/nan"
