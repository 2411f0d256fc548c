"""The placement resolver: presets, custom YAML, derived transports, and refusals a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.placement import (
    PRESETS,
    NodeView,
    PlacementError,
    assign_nodes,
    internal_address,
    parse_placement,
    resolve_placement,
)

REPO = Path(__file__).resolve().parents[2]


def nodes(*labels: str) -> list[NodeView]:
    return [
        NodeView(f"id-{i}", f"127.0.9.{i + 2}", {"hopscope-node": lb} if lb else {})
        for i, lb in enumerate(labels)
    ]


@pytest.mark.parametrize(
    ("name", "where", "transports"),
    [
        ("inproc", "aaa", ["inproc", "inproc"]),
        ("colocated", "aaa", ["uds", "uds"]),
        ("colocated-tcp", "aaa", ["tcp", "tcp"]),
        ("split", "aab", ["uds", "tcp"]),
        ("remote", "abc", ["tcp", "tcp"]),
    ],
)
def test_presets_match_the_design_table(name: str, where: str, transports: list[str]) -> None:
    placement = resolve_placement(name)
    assert [placement.nodes[s] for s in ("tokenizer", "scheduler", "worker")] == list(where)
    assert list(placement.transports.values()) == transports


def test_example_file_puts_the_front_door_alone_and_overrides_a_transport() -> None:
    placement = resolve_placement(str(REPO / "deploy/placements/example.yaml"))
    assert placement.nodes == {"tokenizer": "a", "scheduler": "b", "worker": "b"}
    assert placement.transports == {"tokenizer->scheduler": "tcp", "scheduler->worker": "tcp"}
    assert not placement.is_preset


def test_custom_transports_are_derived_from_nodes() -> None:
    placement = parse_placement(
        {"services": {"tokenizer": "x", "scheduler": "y", "worker": "y"}}, "f.yaml"
    )
    assert placement.transports == {"tokenizer->scheduler": "tcp", "scheduler->worker": "uds"}
    assert placement.node_labels == ["x", "y"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"services": {"tokenizer": "a", "scheduler": "a"}}, "no node label for worker"),
        (
            {"services": {"tokenizer": "a", "scheduler": "a", "worker": "a", "gpu": "b"}},
            "unknown services ['gpu']",
        ),
        (
            {"services": {"tokenizer": "a", "scheduler": "a", "worker": "a bad"}},
            "not a valid label",
        ),
        (
            {
                "services": {"tokenizer": "a", "scheduler": "a", "worker": "b"},
                "transports": {"scheduler->worker": "uds"},
            },
            "cannot use uds",
        ),
        (
            {
                "services": {"tokenizer": "a", "scheduler": "a", "worker": "a"},
                "transports": {"scheduler->worker": "inproc"},
            },
            "--placement inproc",
        ),
        (
            {
                "services": {"tokenizer": "a", "scheduler": "a", "worker": "a"},
                "transports": {"worker->scheduler": "tcp"},
            },
            "unknown edges",
        ),
        ({"service": {}}, "unknown keys ['service']"),
        (["a", "b"], "expected a mapping"),
    ],
)
def test_bad_custom_placements_are_refused_with_what_to_fix(data: object, message: str) -> None:
    with pytest.raises(PlacementError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_placement(data, "bad.yaml")


def test_unknown_name_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlacementError, match="unknown placement 'remot'.*colocated"):
        resolve_placement("remot")
    with pytest.raises(PlacementError, match="does not exist"):
        resolve_placement(str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("services: [unclosed")
    with pytest.raises(PlacementError, match="not valid YAML"):
        resolve_placement(str(broken))


def test_labelled_cluster_pins_each_bundle_to_its_label() -> None:
    plan = assign_nodes(PRESETS["split"], nodes("a", "b", "c"))
    assert plan.selectors == [{"hopscope-node": "a"}, {"hopscope-node": "b"}]
    assert plan.strategy == "STRICT_SPREAD"
    assert plan.bundle_of(PRESETS["split"], "worker") == 1
    assert assign_nodes(PRESETS["colocated"], nodes("a")).strategy == "STRICT_PACK"


def test_unlabelled_cluster_with_enough_nodes_spreads_a_preset() -> None:
    plan = assign_nodes(PRESETS["remote"], nodes("", "", ""))
    assert plan.selectors is None and plan.strategy == "STRICT_SPREAD"


def test_remote_on_one_node_is_refused_not_colocated() -> None:
    with pytest.raises(PlacementError) as info:
        assign_nodes(PRESETS["remote"], nodes("a"))
    message = str(info.value)
    assert "needs 3 nodes" in message and "has 1" in message
    assert "hopscope cluster up --nodes 3" in message


def test_custom_label_nobody_has_is_refused_naming_it() -> None:
    placement = parse_placement(
        {"services": {"tokenizer": "a", "scheduler": "a", "worker": "gpu"}}, "f.yaml"
    )
    with pytest.raises(PlacementError, match="hopscope-node=gpu.*labels: a, b"):
        assign_nodes(placement, nodes("a", "b", ""))


def test_internal_addresses_follow_the_transport(tmp_path: Path) -> None:
    assert (
        internal_address("uds", "127.0.0.3", tmp_path, "worker") == f"unix:{tmp_path}/worker.sock"
    )
    assert internal_address("tcp", "127.0.0.3", tmp_path, "worker", 5000) == "127.0.0.3:5000"
    assert internal_address("inproc", "127.0.0.3", tmp_path, "worker") == "inproc"


def test_a_reservation_that_cannot_fit_is_refused_at_once_naming_what_is_missing() -> None:
    """Issue 22: not after Ray's 30 s reservation timeout, and saying which node lacks what."""
    from deploy.placement import NODE_LABEL_KEY, NodePlan, NodeView
    from deploy.ray_serve import room_refusal

    def node(label: str) -> NodeView:
        return NodeView(label, "10.0.0.1", {NODE_LABEL_KEY: label} if label else {})

    labelled = NodePlan(["a", "b"], [{NODE_LABEL_KEY: "a"}, {NODE_LABEL_KEY: "b"}])
    zero_cpu_b = [(node("a"), 2.0), (node("b"), 0.0)]
    refusal = room_refusal(labelled, [0.01, 0.02], zero_cpu_b, free_cpu=2.0)
    assert refusal is not None and "node b has 0 CPU" in refusal and "--num-cpus" in refusal
    roomy = [(node("a"), 2.0), (node("b"), 1.0)]
    assert room_refusal(labelled, [0.01, 0.02], roomy, free_cpu=3.0) is None
    spread = NodePlan(["tokenizer", "worker"], None)
    refusal = room_refusal(spread, [0.01, 0.01], [(node(""), 4.0), (node(""), 0.0)], 4.0)
    assert refusal is not None and "1 of 2" in refusal
    refusal = room_refusal(labelled, [0.01, 0.02], roomy, free_cpu=0.0)
    assert refusal is not None and "0 free" in refusal


# ---------------------------------------------------------------------------- replicas per node
def test_worker_replicas_per_node_put_each_replica_where_the_file_says() -> None:
    """Issue 22: `worker_replicas: {b: 1, c: 1}`: `worker` on b, `worker-1` on c, each its own
    bundle; the scheduler reaches each over TCP (other nodes)."""
    placement = parse_placement(
        {"services": {"tokenizer": "a", "scheduler": "a"}, "worker_replicas": {"b": 1, "c": 1}},
        "r.yaml",
    )
    assert placement.nodes["worker"] == "b"  # the first node listed
    assert placement.num_replicas(1) == placement.num_replicas(2) == 2
    plan = assign_nodes(placement, nodes("a", "b", "c"), num_replicas=2)
    assert plan.labels == ["a", "b", "c"] and plan.strategy == "STRICT_SPREAD"
    assert plan.selectors == [{"hopscope-node": x} for x in "abc"]
    assert [plan.bundle_of_replica(placement, i) for i in range(2)] == [1, 2]
    assert [placement.replica_transport(plan.replica_label(placement, i)) for i in (0, 1)] == [
        "tcp",
        "tcp",
    ]
    with pytest.raises(PlacementError, match="puts 2 worker replicas.*--worker-replicas is 3"):
        placement.num_replicas(3)


def test_a_replica_on_the_schedulers_node_is_reached_over_its_unix_socket() -> None:
    placement = parse_placement(
        {
            "services": {"tokenizer": "a", "scheduler": "a", "worker": "a"},
            "worker_replicas": {"a": 2, "b": 1},
        },
        "r.yaml",
    )
    assert placement.replica_labels(3) == ["a", "a", "b"]
    assert [placement.replica_transport(x) for x in "ab"] == ["uds", "tcp"]
    plan = assign_nodes(placement, nodes("a", "b"), num_replicas=3)
    assert plan.labels == ["a", "b"] and plan.replica_labels == ["a", "a", "b"]


def test_spread_puts_each_replica_on_a_node_of_its_own_empty_nodes_first() -> None:
    placement = parse_placement(
        {"services": {"tokenizer": "a", "scheduler": "a", "worker": "b"}, "spread": True},
        "s.yaml",
    )
    plan = assign_nodes(placement, nodes("a", "b", "c"), num_replicas=2)
    assert plan.replica_labels == ["b", "c"] and plan.labels == ["a", "b", "c"]
    plan = assign_nodes(placement, nodes("a", "b", "c"), num_replicas=3)
    assert plan.replica_labels == ["b", "c", "a"]
    with pytest.raises(PlacementError, match="spreads 4 worker replicas.*has 3 labelled nodes"):
        assign_nodes(placement, nodes("a", "b", "c"), num_replicas=4)
    # without either key, every replica stays on the worker's node (as before)
    plain = assign_nodes(PRESETS["split"], nodes("a", "b", "c"), num_replicas=2)
    assert plain.labels == ["a", "b"] and plain.bundle_of_replica(PRESETS["split"], 1) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"worker_replicas": {"b": 0}}, "not a replica count"),
        ({"worker_replicas": {"b": "two"}}, "not a replica count"),
        ({"worker_replicas": []}, "must map node labels to replica counts"),
        ({"worker_replicas": {"b bad": 1}}, "not a valid label"),
        ({"worker": "d", "worker_replicas": {"b": 1}}, "services.worker is on 'd'"),
        ({"worker_replicas": {"b": 1}, "spread": True}, "not both"),
        ({"spread": "yes"}, "true or false"),
        (
            {
                "worker": "a",
                "worker_replicas": {"a": 1, "b": 1},
                "transports": {"scheduler->worker": "uds"},
            },
            "cannot use uds with worker replicas on 'b'",
        ),
    ],
)
def test_bad_replica_layouts_are_refused_with_what_to_fix(data: dict, message: str) -> None:
    services = {"tokenizer": "a", "scheduler": "a"}
    if "worker" in data:
        services["worker"] = data.pop("worker")
    elif "worker_replicas" not in data:
        services["worker"] = "b"
    with pytest.raises(PlacementError, match=message):
        parse_placement({"services": services, **data}, "bad.yaml")


# ---- prefill/decode disaggregation ------------------------------------------------------------


def test_disagg_presets_name_each_worker_by_its_role_and_node() -> None:
    from deploy.placement import worker_role

    disagg = resolve_placement("disagg")
    assert disagg.is_disaggregated and not resolve_placement("colocated").is_disaggregated
    assert disagg.worker_names(disagg.num_replicas(1)) == ["worker-prefill", "worker-decode"]
    assert disagg.replica_labels(2) == ["a", "a"]
    split = resolve_placement("disagg-split")
    assert split.replica_labels(2) == ["b", "c"]  # prefill and decode on nodes of their own
    assert [worker_role(n) for n in split.worker_names(2)] == ["prefill", "decode"]
    with pytest.raises(PlacementError, match="puts 2 worker replicas .* --worker-replicas is 3"):
        split.num_replicas(3)


def test_workers_yaml_lists_roles_nodes_and_replicas() -> None:
    placement = parse_placement(
        {
            "services": {"tokenizer": "a", "scheduler": "a"},
            "workers": [
                {"role": "prefill", "node": "b"},
                {"role": "decode", "node": "c", "replicas": 2},
            ],
        },
        "p.yaml",
    )
    assert placement.nodes["worker"] == "b"
    assert placement.num_replicas(1) == 3
    assert placement.worker_names(3) == ["worker-prefill", "worker-decode", "worker-decode-1"]
    assert placement.replica_labels(3) == ["b", "c", "c"]
    assert placement.replica_transport("c") == "tcp"


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ([{"role": "prefill", "node": "b"}], "prefill and decode workers .* not prefill"),
        ([{"role": "chef", "node": "b"}], "role 'chef' is not one of mixed, prefill, decode"),
        ([{"role": "decode", "node": "b", "replicas": 0}], "replicas 0 is not a replica count"),
        ([{"role": "decode", "node": "b", "gpu": 1}], "unknown keys \\['gpu'\\]"),
        ("prefill", "must be a list"),
    ],
)
def test_bad_workers_yaml_says_what_to_change(workers: object, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        parse_placement(
            {"services": {"tokenizer": "a", "scheduler": "a"}, "workers": workers}, "p.yaml"
        )


def test_workers_and_worker_replicas_are_not_both_given() -> None:
    with pytest.raises(PlacementError, match="leave out 'worker_replicas' and 'spread'"):
        parse_placement(
            {
                "services": {"tokenizer": "a", "scheduler": "a"},
                "worker_replicas": {"b": 2},
                "workers": [{"role": "prefill", "node": "b"}, {"role": "decode", "node": "b"}],
            },
            "p.yaml",
        )
