"""Names cannot collide: case-insensitive uniqueness, reserved words, version aliases, catalog objects, and
snapshot addresses written only with plain ASCII digits."""

from __future__ import annotations

import pytest

from storage.workspace import parse_ref


def test_names_differing_only_in_case_are_one_name(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    with pytest.raises(ValueError, match="differs only in case"):
        workspace.publish("Hh", small_pairs.slice(3))
    assert workspace.sql('SELECT count(*) AS n FROM "hh"').to_pylist() == [{"n": 10}]
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["hh@1"]


@pytest.mark.parametrize("name", ["hh_v1", "HH_V2", "data_v10"])
def test_version_alias_shaped_names_are_refused(workspace, small_pairs, name):
    workspace.publish("hh", small_pairs)
    with pytest.raises(ValueError, match="version alias"):
        workspace.publish(name, small_pairs.slice(2))
    assert workspace.sql("SELECT count(*) AS n FROM hh_v1").to_pylist() == [{"n": 10}]


@pytest.mark.parametrize("name", ["gate_summary", "gate_drops", "Gate_Hist", "rejects", "Snapshots", "metrics",
                                  "catalog_views", "snapshot_log", "pairs"])
def test_catalog_object_names_are_refused_before_any_clean(workspace, small_pairs, name):
    with pytest.raises(ValueError, match="reserved"):
        workspace.publish(name, small_pairs)


@pytest.mark.parametrize("name", ["select", "TABLE", "from", "order"])
def test_sql_keywords_are_refused(workspace, small_pairs, name):
    with pytest.raises(ValueError, match="SQL keyword"):
        workspace.publish(name, small_pairs)


def test_clean_statistics_tables_still_publish_after_a_dataset_exists(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    stats = small_pairs.select(["pair_id"])
    workspace.publish("hh", small_pairs, tables={"gate_summary": stats}, kind="clean")
    workspace.publish("hh", small_pairs, tables={"gate_summary": stats}, kind="clean")
    assert workspace.sql("SELECT count(*) AS n FROM gate_summary").to_pylist() == [{"n": 20}]
    with pytest.raises(ValueError, match="names a dataset"):
        workspace.publish("x", small_pairs, tables={"HH": stats})


def test_an_existing_dataset_keeps_publishing_versions(workspace, small_pairs):
    """Creation rules do not lock out a dataset that already exists (a catalog from before the rules)."""
    workspace.publish("hh", small_pairs)
    assert workspace.publish("hh", small_pairs.slice(1)).snapshot_id == "hh@2"


@pytest.mark.parametrize("ref", ["hh@01", "hh@１", "hh@٣", "hh@1\n", "hh@+1", "hh@ 1", "hh@0", "hh@1_0", "hh\n"])
def test_snapshot_addresses_take_only_plain_ascii_digits(workspace, small_pairs, ref):
    workspace.publish("hh", small_pairs)
    with pytest.raises(ValueError, match="invalid"):
        parse_ref(ref)
    with pytest.raises(ValueError):
        workspace.resolve(ref)


def test_plain_addresses_resolve(workspace, small_pairs):
    for _ in range(10):
        workspace.publish("hh", small_pairs)
    assert parse_ref("hh@10") == ("hh", 10) and parse_ref("hh") == ("hh", None)
    assert workspace.resolve("hh@10").version == 10
