"""deploy/docker-compose.yml's control-plane token: the commented example, uncommented as it says.

The example stays commented (``docker compose up`` would fail on a missing secret file), so
this test uncomments the lines it tells the reader to uncomment and checks that the result is
the daemon reading its token from the Docker secret: the secret's mount path in the container
(/run/secrets/<name>) is SHMPIPED_TOKEN_FILE, its host file is the one the recipe creates, and
the ``docker run`` equivalent names the same paths.  The permissions the recipe gives the file
are ones the daemon's token loader accepts and the image's user (group 10001) can read.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "deploy" / "docker-compose.yml"
COMMENTED_KEYS = ("    # environment:", "    # secrets:", "# secrets:")


def uncommented(text: str) -> str:
    """``text`` with the commented `environment`/`secrets` blocks (and their indented lines) restored."""
    lines, out, index = text.splitlines(), [], 0
    while index < len(lines):
        line = lines[index]
        if line in COMMENTED_KEYS:
            indent = line.index("#")
            out.append(line[:indent] + line[indent + 2:])
            index += 1
            while index < len(lines) and lines[index].startswith(" " * indent + "#   "):
                out.append(" " * indent + lines[index][indent + 2:])
                index += 1
            continue
        out.append(line)
        index += 1
    return "\n".join(out) + "\n"


def test_the_commented_token_example_is_the_daemon_reading_a_docker_secret():
    text = COMPOSE.read_text()
    plain = yaml.safe_load(text)
    assert "secrets" not in plain and "secrets" not in plain["services"]["shmpiped"], "the example must stay commented"
    config = yaml.safe_load(uncommented(text))
    daemon = config["services"]["shmpiped"]
    [name] = daemon["secrets"]
    assert daemon["environment"] == {"SHMPIPED_TOKEN_FILE": f"/run/secrets/{name}"}
    source = config["secrets"][name]["file"]
    assert source == "/etc/shmpiped/token"
    # The recipe above creates that file, and `docker run` mounts the same file at the same path.
    assert f"> {source})" in text and f"chgrp 10001 {source} && chmod 0440 {source}" in text
    assert f"-v {source}:/run/secrets/{name}:ro" in text and f"-e SHMPIPED_TOKEN_FILE=/run/secrets/{name}" in text
    # The daemon listens on every interface there, hence the warning.
    assert " ".join(daemon["command"]).endswith("--http-address 0.0.0.0:9750") and "EVERY interface" in text


def test_the_recipes_permissions_suit_the_daemon_and_the_image_user(tmp_path):
    from shmpiped.service.tokens import TokenFileError, load_token_file

    mode = int(re.search(r"chmod (0[0-7]{3}) /etc/shmpiped/token", COMPOSE.read_text()).group(1), 8)
    assert not mode & stat.S_IROTH and mode & stat.S_IRGRP  # group 10001 (the image's) reads it
    token = tmp_path / "token"
    token.write_text("0123456789abcdef" * 4 + "\n")
    token.chmod(mode)
    assert load_token_file(str(token)).enabled
    token.chmod(mode | stat.S_IROTH)  # what the recipe avoids
    with pytest.raises(TokenFileError, match="chmod o-r"):
        load_token_file(str(token))
