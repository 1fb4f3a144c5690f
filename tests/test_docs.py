"""The reference generator (scripts/gen_docs.py): what it writes holds the real
commands, RPCs and paths, its links land on anchors, and it writes nothing that
depends on the machine it ran on."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up by name while the class is being made.
    sys.modules["gen_docs"] = module
    spec.loader.exec_module(module)
    return module


gen_docs = _load_generator()


def _section(text: str, heading: str) -> str:
    """From a heading to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{len(level)}}} ", text[start + len(heading) + 2 :])
    end = start + len(heading) + 2 + following.start() if following else len(text)
    return text[start:end]


def _link_targets(text: str) -> set[str]:
    return set(re.findall(r"\]\(#([^)]+)\)", text))


def _explicit_anchors(text: str) -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_cli_reference_has_every_command_with_its_options() -> None:
    text = gen_docs.render_cli()
    ingest = _section(text, "## ownchat data ingest")
    assert re.search(r"^\| `--dataset` \| `str` \| \*required\* \| Dataset to add", ingest, re.M)
    assert re.search(r"^\| `--pii` \| `str` \| `placeholder` \|", ingest, re.M)
    assert "Usage: `ownchat data ingest [OPTIONS] FILE" in ingest
    create = _section(text, "## ownchat train create")
    assert re.search(r"^\| `--follow` / `--no-follow` \| `bool` \| `--follow` \|", create, re.M)
    for command in ("up", "deploy", "chat", "eval compare", "eval queue enqueue-sample", "keys"):
        assert f"\n## ownchat {command}\n" in text
    # Every link of the contents lands on a heading (GitHub's slug of its text).
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    assert _link_targets(text) <= headings
    assert str(ROOT) not in text and str(Path.home()) not in text


def test_cli_defaults_are_written_as_the_code_states_them() -> None:
    # Defaults resolved on this machine when the command is defined.
    home_default = Path.home() / ".ownchat"
    cache_default = Path.cwd() / "cache"
    app = typer.Typer()

    @app.command()
    def store(
        home: Annotated[Path, typer.Option(envvar="OWNCHAT_HOME", help="Where.")] = home_default,
        cache: Annotated[Path, typer.Option()] = cache_default,
        kind: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Stores things."""

    @app.command()
    def other() -> None:
        """So that store is a sub-command."""

    text = gen_docs.render_cli(app)
    store_section = _section(text, "## ownchat store")
    assert "| `--home` | `path` | `~/.ownchat` | Where. Environment: `OWNCHAT_HOME`. |" in (
        store_section
    )
    assert "| `--cache` | `path` | `cache` |" in store_section
    assert '| `--kind` | `str` | `""` |' in store_section


def test_grpc_reference_has_every_service_and_links_its_types() -> None:
    if not gen_docs.BUF.exists():
        pytest.skip("buf is not installed (make .tools/node_modules/.bin/buf)")
    text = gen_docs.render_grpc(gen_docs.build_descriptors())
    service = _section(text, "### Service DataService")
    assert service.startswith("\n### Service DataService\n\nDataService owns datasets")
    upload = _section(text, "#### UploadDatasetVersion")
    assert (
        "Client streaming: stream [`UploadDatasetVersionRequest`]"
        "(#ownchat.data.v1.UploadDatasetVersionRequest) → [`UploadDatasetVersionResponse`]"
    ) in upload
    assert "Uploads one source file" in upload
    for name in ("TrainerService", "EvaluatorService", "ServingService", "GatewayAdminService"):
        assert f"\n### Service {name}\n" in text
    # A oneof, a map and a proto3 optional field, with their comments.
    assert "| `chunk` | 2 | `bytes` | oneof `payload` | The next bytes of the source file. |" in (
        text
    )
    assert "| `changed` | 1 | map&lt;`string`, `int64`&gt; |  | Messages changed, by step" in text
    assert re.search(r"^\| `validation_fraction` \| 4 \| `double` \| optional \|", text, re.M)
    assert re.search(r"^\| `SAMPLE_KIND_CHAT` \| 1 \| Chat conversations", text, re.M)
    assert _link_targets(text) <= _explicit_anchors(text)


def test_rest_reference_has_every_path_and_the_document_is_whole() -> None:
    openapi = gen_docs.gateway_openapi()
    assert {"post"} <= set(openapi["paths"]["/v1/chat/completions"])
    assert "get" in openapi["paths"]["/admin/v1/api-keys"]
    assert openapi["paths"]["/review/"]["get"]["security"] == []
    assert openapi["paths"]["/v1/files"]["post"]["x-ownchat-scope"] == "fine-tune"
    text = gen_docs.render_rest(openapi)
    chat = _section(text, "### POST /v1/chat/completions")
    assert "OpenAI's chat completions" in chat
    assert "with the `chat` scope" in chat
    assert "[`ChatCompletionRequest`](#schema-ChatCompletionRequest)" in chat
    # The gateway answers invalid requests 400 in OpenAI's shape, never FastAPI's 422.
    assert "| 422 |" not in text and "HTTPValidationError" not in text
    files = _section(text, "### GET /v1/files")
    assert re.search(r"^\| `order` \| query \| `\"asc\"` \\\| `\"desc\"` \|", files, re.M)
    assert "Credential: none." in _section(text, "### POST /webhooks/telegram")
    schema = _section(text, "### ChatCompletionRequest")
    assert re.search(r"^\| `messages` \| array of \[`ChatMessage`\]", schema, re.M)
    assert _link_targets(text) <= _explicit_anchors(text)
    written = gen_docs.openapi_json(openapi)
    assert json.loads(written) == openapi
    assert written == json.dumps(json.loads(written), indent=2, sort_keys=True) + "\n"


def test_check_lists_what_generating_would_change(tmp_path: Path) -> None:
    same, changed, missing = tmp_path / "same.md", tmp_path / "changed.md", tmp_path / "gone.md"
    same.write_text("a\n")
    changed.write_text("old\n")
    files = {same: "a\n", changed: "new\n", missing: "b\n"}
    assert gen_docs.stale(files) == [changed, missing]
