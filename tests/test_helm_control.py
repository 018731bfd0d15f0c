"""The chart's side of the control plane: the token Secret and who may reach the console.

``control.existingSecret`` mounts a Secret's key as the daemon's token file (SHMPIPED_TOKEN_FILE),
read-only and mode 0440 so that the daemon, which refuses a world-readable token file, accepts it
and the pod's user can read it through fsGroup (or as uid 0 with realtime.runAsRoot).
``networkPolicy.console.from`` adds the peers that may reach port 9750, where the console and
the control plane are served beside /metrics; without it only Prometheus and the helm test pod
do.  Every rendering is validated against the Kubernetes schemas (strict), wrong values are
refused by values.schema.json or by the templates with the way out.
"""

from __future__ import annotations

import stat

import pytest
import yaml

from . import helm_support
from .helm_support import (
    ci_values,
    container,
    env,
    hook_pods,
    of_kind,
    only,
    pod_spec,
    refused,
    render,
    selects,
    valid,
    workload,
)

CONTROL = "control-console-values.yaml"
TOKEN_DIR = "/run/secrets/shmpiped"
TOKEN_FILE = f"{TOKEN_DIR}/token"

# The session fixtures of tests/helm_support.py.
helm, kubernetes_validate = helm_support.helm, helm_support.kubernetes_validate


def token_volume(objects: list[dict]) -> dict | None:
    volumes = [volume for volume in pod_spec(objects)["volumes"] if volume["name"] == "control-token"]
    assert len(volumes) <= 1
    return volumes[0] if volumes else None


def kubelet_file_mode(volume: dict, pod_context: dict) -> int:
    """The mode the kubelet gives a Secret volume's file: defaultMode, to which a pod with fsGroup
    adds group read (pkg/volume/volume_linux.go: read-only volumes get mode | 0440)."""
    mode = volume["secret"].get("defaultMode", 0o644)
    if pod_context.get("fsGroup") is not None:
        mode |= 0o440
    return mode


def reads(uid: int, groups: set[int], mode: int, owner: int = 0, group: int | None = None) -> bool:
    """Whether a process without CAP_DAC_OVERRIDE (every capability but two dropped) may read."""
    if uid == owner:
        return bool(mode & stat.S_IRUSR)
    if group is not None and group in groups:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


# ------------------------------------------------------------------------------ the token Secret


def test_the_secret_becomes_the_token_file(helm, kubernetes_validate):
    given = yaml.safe_load(ci_values(CONTROL).read_text())["control"]
    objects = valid(kubernetes_validate, render(helm, ci_values(CONTROL)))
    assert env(objects)["SHMPIPED_TOKEN_FILE"] == TOKEN_FILE
    volume = token_volume(objects)
    assert volume["secret"]["secretName"] == given["existingSecret"]
    # The one key, at a fixed name: the daemon's path does not depend on secretKey.
    assert volume["secret"]["items"] == [{"key": given["secretKey"], "path": "token"}]
    [mount] = [mount for mount in container(objects)["volumeMounts"] if mount["name"] == "control-token"]
    assert mount == {"name": "control-token", "mountPath": TOKEN_DIR, "readOnly": True}
    assert TOKEN_FILE == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert volume["secret"]["defaultMode"] == 0o440
    # The daemon serves the console and the control plane on the port the Service and the policy name.
    assert env(objects)["SHMPIPED_HTTP_ADDRESS"] == "0.0.0.0:9750"
    assert container(objects)["ports"] == [{"name": "metrics", "containerPort": 9750, "protocol": "TCP"}]


def test_the_default_key_and_no_secret(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, None, "control.existingSecret=ao-control"))
    assert token_volume(objects)["secret"]["items"] == [{"key": "token", "path": "token"}]
    # Off by default: no token file, control requests answer 403 (README).
    objects = render(helm)
    assert "SHMPIPED_TOKEN_FILE" not in env(objects) and token_volume(objects) is None
    assert TOKEN_DIR not in {mount["mountPath"] for mount in container(objects)["volumeMounts"]}


@pytest.mark.parametrize(("values", "sets", "uid"), [
    (None, (), 10001),                                         # the image's user, through fsGroup
    ("realtime-values.yaml", (), 0),                           # realtime.runAsRoot: uid 0, no DAC override
    ("realtime-values.yaml", ("podSecurityContext.fsGroup=null",), 0),
    (None, ("podSecurityContext.fsGroup=4242", "podSecurityContext.runAsGroup=4242"), 10001),
])
def test_the_daemon_can_read_the_token_and_nobody_else(helm, kubernetes_validate, values, sets, uid):
    objects = valid(kubernetes_validate, render(helm, values and ci_values(values),
                                                "control.existingSecret=ao-control", *sets))
    pod_context = pod_spec(objects).get("securityContext") or {}
    context = container(objects)["securityContext"]
    assert context.get("runAsUser", pod_context.get("runAsUser")) == uid
    assert context["capabilities"]["drop"] == ["ALL"]
    mode = kubelet_file_mode(token_volume(objects), pod_context)
    assert not mode & stat.S_IROTH, "the daemon refuses a world-readable token file"
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    group = pod_context.get("fsGroup")
    groups = {context.get("runAsGroup", pod_context.get("runAsGroup")), group}
    assert reads(uid, groups, mode, group=group), (uid, oct(mode), group)
    # Another uid of the node outside fsGroup cannot.
    assert not reads(12345, {12345}, mode, group=group)


def secret_volume_like_the_kubelet(directory, key_value: str, mode: int):
    """A Secret volume as the kubelet's atomic writer lays it out: the file in a timestamped
    directory, ``..data`` a link to that directory, the key's name a link through ``..data``."""
    payload = directory / "..2026_12_01_00_00_00.000000001"
    payload.mkdir(parents=True)
    (payload / "token").write_text(key_value)
    (payload / "token").chmod(mode)
    (directory / "..data").symlink_to(payload.name)
    (directory / "token").symlink_to("..data/token")
    return directory / "token"


def test_the_daemon_loads_the_mounted_secret_as_it_is(helm, tmp_path):
    """One bare token with the trailing newline `kubectl create secret --from-file` keeps, at the
    mode the chart asks for: the daemon's loader accepts it (admin); at Kubernetes' default mode
    (0644) it is refused with the fix."""
    from shmpiped.service.tokens import TokenFileError, load_token_file, scope_level

    objects = render(helm, None, "control.existingSecret=ao-control")
    volume = token_volume(objects)
    mode = kubelet_file_mode(volume, pod_spec(objects)["securityContext"])
    path = secret_volume_like_the_kubelet(tmp_path / "chart", "6f1c0ffee" * 4 + "\n", mode)
    assert path.name == env(objects)["SHMPIPED_TOKEN_FILE"].rsplit("/", 1)[1]
    table = load_token_file(str(path))
    assert table.level_of("6f1c0ffee" * 4) == scope_level("admin") and table.level_of("6f1c0ffee") is None
    default = secret_volume_like_the_kubelet(tmp_path / "default", "6f1c0ffee" * 4 + "\n", 0o644)
    with pytest.raises(TokenFileError, match="chmod o-r"):
        load_token_file(str(default))


def test_a_token_the_daemon_could_not_read_is_refused_with_the_way_out(helm):
    stderr = refused(helm, "--set", "control.existingSecret=ao-control", "--set", "podSecurityContext.fsGroup=null")
    assert "podSecurityContext.fsGroup is not set" in stderr and "set podSecurityContext.fsGroup" in stderr, stderr
    # Without a Secret the chart does not care about fsGroup.
    assert render(helm, None, "podSecurityContext.fsGroup=null")
    # A container run as uid 0 reads the root-owned file.
    objects = render(helm, None, "control.existingSecret=ao-control", "podSecurityContext.fsGroup=null",
                     "securityContext.runAsUser=0", "securityContext.runAsNonRoot=false")
    assert token_volume(objects) is not None


@pytest.mark.parametrize(("values", "message"), [
    ({"extraVolumes": [{"name": "control-token", "emptyDir": {}}]},
     'extraVolumes[0]: the name "control-token" is taken'),
    ({"control": {"existingSecret": "ao-control"}, "extraVolumes": [{"name": "a", "emptyDir": {}}],
      "extraVolumeMounts": [{"name": "a", "mountPath": "/run/secrets/shmpiped/more"}]},
     "mountPath /run/secrets/shmpiped/more is at or under the chart's mount /run/secrets/shmpiped "
     "(volume control-token)"),
])
def test_collisions_with_the_token_mount_are_refused(helm, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    assert message in refused(helm, "-f", str(path))


@pytest.mark.parametrize(("args", "message"), [
    (("--set-json", "control.existingSecret=true"), "at '/control/existingSecret': got boolean, want string"),
    (("--set-json", 'control.existingSecret=["ao-control"]'), "at '/control/existingSecret': got array, want string"),
    (("--set", "control.existingSecret=Ao_Control"), "/control/existingSecret"),   # not a Secret's name
    (("--set", "control.secretKey=a/b"), "/control/secretKey"),                    # not a Secret's key
    (("--set", "control.secretKey="), "/control/secretKey"),
    (("--set", "control.existingsecret=ao-control"), "additional properties 'existingsecret'"),
    (("--set", "control.create=true"), "additional properties 'create'"),
])
def test_schema_refuses_wrong_control_values(helm, args, message):
    stderr = refused(helm, *args)
    assert "values don't meet the specifications of the schema" in stderr and message in stderr, stderr


# ------------------------------------------------------------------------------ the NetworkPolicy


def test_console_peers_reach_port_9750_and_nobody_else(helm, kubernetes_validate):
    given = yaml.safe_load(ci_values(CONTROL).read_text())["networkPolicy"]["console"]["from"]
    objects = valid(kubernetes_validate, render(helm, ci_values(CONTROL)))
    spec = only(objects, "NetworkPolicy")["spec"]
    pod = workload(objects)["spec"]["template"]
    assert selects(spec["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"]
    scrape, test, console = spec["ingress"]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    [test_pod] = hook_pods(objects)
    assert selects(test["from"][0]["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])
    assert console["from"] == given
    # The same named port as the scrape: the container port of the daemon's HTTP server.
    assert console["ports"] == scrape["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_without_console_peers_only_prometheus_and_the_test_pod_are_admitted(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, None, "networkPolicy.enabled=true",
                                                "control.existingSecret=ao-control"))
    spec = only(objects, "NetworkPolicy")["spec"]
    [test_pod] = hook_pods(objects)
    scrape, test = spec["ingress"]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    [peer] = test["from"]
    assert set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])
    # Peers without the policy enabled render nothing.
    assert not of_kind(render(helm, None, "networkPolicy.console.from[0].ipBlock.cidr=10.0.0.0/8"), "NetworkPolicy")


@pytest.mark.parametrize(("peers", "message"), [
    ('[{}]', "at '/networkPolicy/console/from/0': minProperties"),
    ('[{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]', "at '/networkPolicy/console/from/0': maxProperties"),
    ('[{"namespaceSelecter": {}}]', "additional properties 'namespaceSelecter'"),
    ('[{"ipBlock": {"except": ["10.0.0.0/8"]}}]', "missing property 'cidr'"),
    ('[{"podSelector": {"matchLabel": {"a": "b"}}}]', "additional properties 'matchLabel'"),
    ('{"ipBlock": {"cidr": "10.0.0.0/8"}}', "at '/networkPolicy/console/from': got object, want array"),
])
def test_schema_refuses_wrong_console_peers(helm, peers, message):
    stderr = refused(helm, "--set", "networkPolicy.enabled=true", "--set-json", f"networkPolicy.console.from={peers}")
    assert "values don't meet the specifications of the schema" in stderr and message in stderr, stderr
