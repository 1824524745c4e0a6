"""Static tokens fail closed: a tokens file that cannot be read or parsed accepts no token (and
/healthz says so) until it loads; a revoke is noticed however the file changed; names refund-mcp
writes as actor itself cannot be given to a token."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2
import pytest

from refund_mcp.auth import load_auth_config
from refund_mcp.auth.static import StaticTokenVerifier
from refund_mcp.auth.tokens_file import TokensFileError, add_token, hash_token, parse_tokens, remove_tokens
from refund_mcp.http_app import build_http_app
from tests.security._support import base_env, mcp_post, run_cli, tool_call
from tests.support.servers import free_port, refund_mcp_command, wait_until_healthy

pytestmark = pytest.mark.anyio


async def test_a_tokens_file_that_becomes_unreadable_refuses_every_token_until_it_loads(tmp_path):
    path = tmp_path / "tokens.yaml"
    kept, _ = add_token(path, "kept-bot", ["refunds:read"])
    revoked, entry = add_token(path, "revoked-bot", ["refunds:read"])
    verifier = StaticTokenVerifier(path)
    assert await verifier.verify_token(revoked) is not None
    remove_tokens(path, entry.sha256[:16])
    # What a revoke run by another user can leave behind: a file this process cannot open. (A
    # directory in its place fails the same way, and also for root, who reads any file.)
    text = path.read_text()
    path.unlink()
    path.mkdir()
    assert await verifier.verify_token(revoked) is None
    assert await verifier.verify_token(kept) is None, "no static token while the file cannot be read"
    assert verifier.problem is not None and "cannot read" in verifier.problem
    path.rmdir()
    path.write_text(text)  # the operator fixes it: nothing restarts, the next request loads it
    assert (await verifier.verify_token(kept)).client_id == "kept-bot"
    assert await verifier.verify_token(revoked) is None


async def test_a_same_size_edit_within_the_mtime_granularity_is_noticed(tmp_path):
    path = tmp_path / "tokens.yaml"
    old_token, old_entry = add_token(path, "bot", ["refunds:read"])
    before = path.stat()
    now = before.st_mtime_ns / 1e9 + 0.5  # half a second after the write: within a coarse mtime tick
    verifier = StaticTokenVerifier(path, wall_clock=lambda: now)
    assert await verifier.verify_token(old_token) is not None
    new_token = "rmcp_" + "n" * 43
    edited = path.read_text().replace(old_entry.sha256, hash_token(new_token))
    with path.open("r+") as handle:  # in place: same inode, same size
        handle.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime, as a coarse clock gives
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert await verifier.verify_token(old_token) is None
    assert (await verifier.verify_token(new_token)).client_id == "bot"


async def test_healthz_reports_degraded_while_the_tokens_file_does_not_load(app_factory, tmp_path):
    path = tmp_path / "tokens.yaml"
    add_token(path, "bot", ["refunds:read"])
    config = load_auth_config({"REFUND_MCP_TOKENS": str(path)}, host="127.0.0.1", port=8765)
    async with app_factory() as app:
        starlette_app = build_http_app(app, "127.0.0.1", port=8765, auth=config)
        async with starlette_app.router.lifespan_context(starlette_app):
            async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=starlette_app), base_url="http://127.0.0.1:8765") as http:
                assert (await http.get("/healthz")).status_code == 200
                good = path.read_text()
                path.write_text("- {actor: bot, scopes: [refunds:read], sha256: not-a-hash}\n")
                health = await http.get("/healthz")
                assert health.status_code == 503
                assert health.json()["status"] == "degraded" and "tokens file" in health.json()["auth"]
                assert str(path) not in health.text, "the unauthenticated page does not name the file"
                path.write_text(good)
                assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("actor", ["refund-mcp", "REFUND-MCP", "external", "webhook:stripe", "refund-mcp-worker"])
def test_names_refund_mcp_writes_as_actor_cannot_be_given_to_a_token(tmp_path, actor):
    path = tmp_path / "tokens.yaml"
    with pytest.raises(TokensFileError, match="refund-mcp writes as actor"):
        add_token(path, actor, ["refunds:read"])
    with pytest.raises(TokensFileError, match="refund-mcp writes as actor"):
        parse_tokens(f"- {{actor: '{actor}', scopes: [refunds:read], sha256: {'a' * 64}}}", "tokens.yaml")


def test_tokens_add_on_the_command_line_refuses_a_reserved_name(tmp_path):
    finished = run_cli({"REFUND_MCP_TOKENS": str(tmp_path / "tokens.yaml")}, "tokens", "add", "webhook:stripe")
    assert finished.returncode != 0 and finished.stdout == "" and "refund-mcp writes as actor" in finished.stderr


# ------------------------------------------------------------------ a server run by another user

UNPRIVILEGED = "refundtest"


def _as_other_user() -> dict[str, object] | None:
    """subprocess options that run a command as someone who cannot read a root-owned 0600 file, or None."""
    if os.geteuid() != 0:
        return None
    if shutil.which("useradd") is not None:
        subprocess.run(["useradd", "--system", "--no-create-home", UNPRIVILEGED], capture_output=True, check=False)
        try:
            probe = subprocess.run([sys.executable, "-c", "pass"], user=UNPRIVILEGED, capture_output=True, timeout=60, check=False)
        except (KeyError, OSError):
            probe = None
        if probe is not None and probe.returncode == 0:
            return {"user": UNPRIVILEGED}
    return None


def _without_file_access_override() -> list[str] | None:
    """Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: it cannot read another owner's 0600 file.
    Used when no unprivileged user can run this interpreter (it lives under a private home)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, timeout=60, check=False)
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow
def test_a_server_run_by_another_user_refuses_every_static_token_once_a_revoke_leaves_the_file_unreadable():
    options = _as_other_user()
    prefix: list[str] = []
    if options is None:
        found = _without_file_access_override()
        if found is None:
            pytest.skip("needs root with useradd (an unprivileged user who can run this Python) or setpriv")
        prefix = found
    workdir = Path(tempfile.mkdtemp(prefix="refund-mcp-revoke-"))
    try:
        os.chmod(workdir, 0o777)
        path = workdir / "tokens.yaml"
        kept, _ = add_token(path, "kept-bot", ["refunds:read"])
        revoked, entry = add_token(path, "revoked-bot", ["refunds:read"])
        server_owner = UNPRIVILEGED if options else None
        if server_owner:
            shutil.chown(path, user=server_owner)
        env = {**os.environ, **base_env(workdir), "REFUND_MCP_TOKENS": str(path), "HOME": str(workdir)}
        port = free_port()
        command = [*prefix, *refund_mcp_command(), "serve", "--transport", "http", "--port", str(port)]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options or {})  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(f"{base}/healthz", proc)
            call = tool_call("list_refunds")
            assert mcp_post(f"{base}/mcp", call, token=revoked).status_code == 200
            # A revoke run as root: `tokens revoke` keeps the file's owner, so the file is then handed to
            # someone else, mode 0600, as an editor or an older tool running as root leaves it (for the
            # capability-less root server: another owner, which it equally cannot read).
            finished = run_cli({"REFUND_MCP_TOKENS": str(path)}, "tokens", "revoke", entry.fingerprint)
            assert finished.returncode == 0, finished.stderr
            assert path.stat().st_uid == (pwd.getpwnam(server_owner).pw_uid if server_owner else 0), "revoke keeps the owner"
            os.chown(path, 0 if server_owner else 65534, 0 if server_owner else 65534)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert mcp_post(f"{base}/mcp", call, token=revoked).status_code == 401
            assert mcp_post(f"{base}/mcp", call, token=kept).status_code == 401, "no static token while unreadable"
            health = httpx2.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            # Making it readable again is enough: no restart, and the revoke holds.
            os.chmod(path, 0o644)
            assert mcp_post(f"{base}/mcp", call, token=kept).status_code == 200
            assert mcp_post(f"{base}/mcp", call, token=revoked).status_code == 401
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        assert "every static bearer token is refused" in stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give the file to another owner")
def test_a_revoke_run_as_root_keeps_the_owner_the_server_reads_the_file_as(tmp_path):
    path = tmp_path / "tokens.yaml"
    _, entry = add_token(path, "bot", ["refunds:read"])
    os.chown(path, 65534, 65534)
    remove_tokens(path, entry.sha256[:16])
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
