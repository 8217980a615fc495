"""docs/operations.md §2-§4 on a machine: keys, configuration, units enabled, as the page
says (only the node names and addresses are the test's)."""

from __future__ import annotations

import re

from tests.systemd.conftest import operations_block
from tests.systemd.machine import Machine, wait_until

SERVICES = ("zcron-scheduler.service", "zcron-worker@1.service", "zcron-sink.service")
PAGE_ADDRESSES = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}
PAGE_PEERS = ", ".join(f'{sid} = "tcp://{ip}:7701"' for sid, ip in PAGE_ADDRESSES.items())
PAGE_SCHEDULERS = f"schedulers = {{ {PAGE_PEERS} }}"


def key_commands(host: str, scheduler_id: str) -> str:
    """§2's commands for this node: n3's block verbatim, n1's with its names replaced."""
    if host == "n3":
        return re.findall(r"```sh\n(.*?)```", section("2. Keys"), re.S)[1]
    block = operations_block("2. Keys")
    if scheduler_id == "c":  # the host stands in for n3: its worker id is HOST-1
        block += "zcron keygen /etc/zcron/keys sink\nzcron keygen /etc/zcron/keys cli\n"
        block += "chown zcron: /etc/zcron/keys/sink.key_secret\n"
    return (
        block.replace("keys a ", f"keys {scheduler_id} ")
        .replace("/a.key_secret", f"/{scheduler_id}.key_secret")
        .replace("n1-1", f"{host}-1")
    )


def section(heading: str) -> str:
    from tests.systemd.conftest import OPERATIONS

    text = OPERATIONS.read_text()
    start = text.index(f"## {heading}")
    return text[start : text.index("\n## ", start + 1)]


def config(scheduler_id: str, schedulers: str | None = None, sink: str | None = None) -> str:
    """§3's configuration with this node's id (and a single node's own addresses)."""
    text = operations_block("3. Configuration", "toml")
    assert PAGE_SCHEDULERS in text and 'id = "a"' in text, "operations.md §3 changed"
    text = text.replace('id = "a"', f'id = "{scheduler_id}"')
    if schedulers:
        text = text.replace(PAGE_SCHEDULERS, f"schedulers = {schedulers}")
    if sink:
        text = text.replace('sink = "tcp://10.0.0.3:7710"', f'sink = "{sink}"')
    return text


def enable_command(runs_sink: bool) -> str:
    """§4's `systemctl enable --now` line for a node with or without the sink."""
    lines = [ln for ln in operations_block("4. systemd").splitlines() if "enable --now" in ln]
    line = next(ln for ln in lines if ("zcron-sink" in ln) == runs_sink)
    return line.split("#")[0].strip()


def deploy_keys(machine: Machine, scheduler_id: str) -> None:
    machine.sh("set -e\n" + key_commands(machine.name, scheduler_id), check=True)


def start_units(machine: Machine, conf: str, runs_sink: bool) -> None:
    machine.write("/etc/zcron/zcron.conf", conf)
    enabled = machine.sh(enable_command(runs_sink), timeout=120)
    assert enabled.returncode == 0, enabled.stderr + machine.sh("journalctl -n 40 -o cat").stdout
    units = SERVICES if runs_sink else SERVICES[:2]
    for unit in units:
        wait_until(lambda u=unit: machine.show(u)["SubState"] == "running", 20, f"{unit} running")
