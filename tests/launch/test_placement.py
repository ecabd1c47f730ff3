"""The ranks' placement: its wire format, the record fields it yields, and naming a lost peer."""

from __future__ import annotations

from itwinai_lightning.launch.placement import Placement, RankPlace, decode, encode, lost_peer


def test_encode_decode_round_trip_and_long_names() -> None:
    place = RankPlace(3, "jwb0123.juwels", 1, 2)
    assert decode(encode(place)) == place
    long = RankPlace(0, "n" * 100, 0, 0)
    assert decode(encode(long)).hostname == "n" * 64  # cut at HOST_NAME_MAX, same length for every rank
    assert len(encode(long)) == len(encode(place))


def test_record_fields_from_every_rank() -> None:
    ranks = (RankPlace(0, "node1", 0, 0), RankPlace(1, "node1", 1, 0), RankPlace(2, "node2", 0, 1),
             RankPlace(3, "node2", 1, 1))  # fmt: skip
    fields = Placement("srun", ranks).record_fields()
    assert fields["hostnames"] == ["node1", "node2"]
    assert (fields["num_nodes"], fields["devices_per_node"], fields["world_size"]) == (2, 2, 4)
    assert fields["launcher"] == "srun" and fields["ranks"][2] == {
        "rank": 2, "hostname": "node2", "local_rank": 0, "node_rank": 1,
    }  # fmt: skip


def test_lost_peer_is_named_from_the_address_in_the_error() -> None:
    placed = Placement("srun", (RankPlace(0, "here", 0, 0), RankPlace(1, "localhost", 0, 1)))
    error = "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:21495"
    assert lost_peer(error, placed, own_rank=0) == "rank 1 on localhost"
    # no address in the error: every other rank, with its host
    assert lost_peer("Timed out waiting 5000ms", placed, own_rank=0) == "rank 1 on localhost"
    assert lost_peer("anything", None, own_rank=0) == "another rank"
