"""Cross-field config checks: each one a user would hit, each asserted on pydantic's exact error payload."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.core.config import CameraSettings, DecisionSettings, MqttSettings, SettingsError, TlsSettings, load_settings


def errors(exc_info: pytest.ExceptionInfo[ValidationError]) -> list[dict[str, object]]:
    return exc_info.value.errors(include_url=False)  # type: ignore[return-value]


def test_tls_client_certificate_without_its_key() -> None:
    with pytest.raises(ValidationError) as exc_info:
        TlsSettings(enabled=True, cert_file=Path("client.pem"))
    assert errors(exc_info) == [{
        "type": "tls_client_pair", "loc": (), "msg": "cert_file is set without key_file: mutual TLS needs both",
        "input": {"enabled": True, "cert_file": Path("client.pem")},
        "ctx": {"given": "cert_file", "missing": "key_file"},
    }]


def test_tls_key_without_its_certificate() -> None:
    with pytest.raises(ValidationError) as exc_info:
        TlsSettings(enabled=True, key_file=Path("client.key"))
    assert errors(exc_info) == [{
        "type": "tls_client_pair", "loc": (), "msg": "key_file is set without cert_file: mutual TLS needs both",
        "input": {"enabled": True, "key_file": Path("client.key")},
        "ctx": {"given": "key_file", "missing": "cert_file"},
    }]


def test_tls_files_while_tls_is_off() -> None:
    with pytest.raises(ValidationError) as exc_info:
        TlsSettings(ca_file=Path("ca.pem"), insecure=True)
    assert errors(exc_info) == [{
        "type": "tls_disabled", "loc": (), "msg": "ca_file, insecure would be ignored: set enabled = true to use TLS",
        "input": {"ca_file": Path("ca.pem"), "insecure": True}, "ctx": {"fields": "ca_file, insecure"},
    }]


def test_reconnect_delays_in_the_wrong_order() -> None:
    with pytest.raises(ValidationError) as exc_info:
        MqttSettings(reconnect_min_s=60, reconnect_max_s=10)
    assert errors(exc_info) == [{
        "type": "reconnect_range", "loc": (), "msg": "reconnect_min_s (60.0) must not exceed reconnect_max_s (10.0)",
        "input": {"reconnect_min_s": 60, "reconnect_max_s": 10}, "ctx": {"min": 60.0, "max": 10.0},
    }]


def test_password_without_username() -> None:
    with pytest.raises(ValidationError) as exc_info:
        MqttSettings(password="hunter2")  # type: ignore[arg-type]
    assert errors(exc_info) == [{
        "type": "password_without_username", "loc": (),
        "msg": "password is set without username: the broker would never see it",
        "input": {"password": "hunter2"}, "ctx": {},
    }]


def test_region_names_repeat_within_a_camera() -> None:
    with pytest.raises(ValidationError) as exc_info:
        CameraSettings(name="cam", source="0", rois=[{"name": "tray"}, {"name": "tray"}])  # type: ignore[list-item]
    assert errors(exc_info) == [{
        "type": "duplicate_roi", "loc": (), "msg": "region names of camera cam must be unique, got ['tray', 'tray']",
        "input": {"name": "cam", "source": "0", "rois": [{"name": "tray"}, {"name": "tray"}]},
        "ctx": {"camera": "cam", "names": ["tray", "tray"]},
    }]


def test_planned_sku_on_a_kiosk_camera() -> None:
    rois = [{"name": "slot1", "expected_sku": "milk"}, {"name": "slot2"}]
    with pytest.raises(ValidationError) as exc_info:
        CameraSettings(name="cam", source="0", rois=rois)  # type: ignore[arg-type]
    assert errors(exc_info) == [{
        "type": "expected_sku_needs_shelf", "loc": (),
        "msg": "expected_sku of ['slot1'] only applies to mode = \"shelf\" cameras",
        "input": {"name": "cam", "source": "0", "rois": rois}, "ctx": {"rois": ["slot1"]},
    }]
    assert CameraSettings(name="cam", source="0", mode="shelf", rois=rois).rois[0].expected_sku == "milk"  # type: ignore[arg-type]


def test_min_frames_over_window() -> None:
    with pytest.raises(ValidationError) as exc_info:
        DecisionSettings(window=3, min_frames=4)
    assert errors(exc_info) == [{
        "type": "min_frames_over_window", "loc": (), "msg": "min_frames (4) must not exceed window (3)",
        "input": {"window": 3, "min_frames": 4}, "ctx": {"min_frames": 4, "window": 3},
    }]


def test_a_section_error_names_its_path_and_masks_secrets(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[device]\nid = "k1"\nstore = "s1"\n[mqtt]\npassword = "hunter2"\n')
    with pytest.raises(SettingsError) as ei:
        load_settings(p)
    assert ei.value.problems == [("mqtt", "{'password': '**********'}",
                                  "password is set without username: the broker would never see it")]
    assert "hunter2" not in str(ei.value)
