"""The allow-list decision itself."""

from __future__ import annotations

from dicomnode.config import IngressConfig
from dicomnode.ingress import SenderPolicy


def policy(**config: object) -> SenderPolicy:
    return SenderPolicy.from_config(IngressConfig.model_validate(config))


def test_deny_by_default() -> None:
    assert not policy().accepts("ANYONE", "127.0.0.1")


def test_title_without_host_is_accepted_from_anywhere() -> None:
    p = policy(allowed_senders=[{"ae_title": "CT1"}])
    assert p.accepts("CT1", "10.0.0.1") and p.accepts("CT1  ", "::1")
    assert not p.accepts("ct1", "10.0.0.1")


def test_title_tied_to_hosts() -> None:
    p = policy(
        allowed_senders=[
            {"ae_title": "PACS", "host": "10.0.0.5"},
            {"ae_title": "PACS", "host": "2001:db8::1"},
        ]
    )
    assert p.accepts("PACS", "10.0.0.5")
    assert p.accepts("PACS", "::ffff:10.0.0.5")
    assert p.accepts("PACS", "2001:0db8:0000:0000:0000:0000:0000:0001")
    assert not p.accepts("PACS", "10.0.0.6")
    assert not p.accepts("OTHER", "10.0.0.5")


def test_allow_any() -> None:
    assert policy(allow_any=True).accepts("WHOEVER", "192.0.2.1")


def test_called_ae_title_defaults_to_the_node_s() -> None:
    p = SenderPolicy.from_config(IngressConfig(), "DICOMNODE")
    assert p.serves("DICOMNODE") and p.serves(" DICOMNODE  ")
    assert not p.serves("WRONGAET") and not p.serves("dicomnode")


def test_called_ae_titles_replace_the_node_s() -> None:
    config = IngressConfig.model_validate({"called_ae_titles": ["AI_CT", "AI_MR"]})
    p = SenderPolicy.from_config(config, "DICOMNODE")
    assert p.serves("AI_CT") and p.serves("AI_MR")
    assert not p.serves("DICOMNODE")
