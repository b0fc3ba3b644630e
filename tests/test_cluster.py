"""The deployment files (Dockerfile, cluster/, README "Running on a cluster") agree with Ray, with the code and with
each other. No Docker engine, cloud or Kubernetes is needed: the launcher configs go through Ray's own validation, the
KubeRay entrypoint and the README's commands through the real argument parsers (the job's and Ray's CLI), and the
Dockerfile is read as a file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_CONFIGS = ["aws-gpu.yaml", "local-onprem.yaml"]
KUBERAY = ["kuberay/rayjob.yaml", "kuberay/raycluster.yaml"]
SECRET_RE = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S", re.I)


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mc = _load_module("make_constraints", CLUSTER / "make_constraints.py")


def image_ref() -> str:
    return (CLUSTER / "IMAGE").read_text().strip()


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def kube_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def kube_kind(name: str, kind: str) -> dict:
    (doc,) = [d for d in kube_docs(name) if d["kind"] == kind]
    return doc


def cluster_spec(name: str) -> dict:
    doc = kube_kind(name, "RayJob") if name.endswith("rayjob.yaml") else kube_kind(name, "RayCluster")
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def constraint_pins() -> dict[str, str]:
    return mc.read_pins(CLUSTER / "constraints.txt")


def parse_job_args(args: list[str]):
    """The job's own parser and config validation on a `python -m job run ...` argument list (after `-m job`)."""
    from job.__main__ import build_parser, config_from_args

    ns = build_parser().parse_args(args)
    assert ns.command == "run"
    return ns, config_from_args(ns)


# --------------------------------------------------------------------------------------------------------------------
# Ray cluster launcher configs: Ray's own validation (what `ray up` runs before touching the cloud)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(launcher(name))  # merges the provider's defaults, as `ray up` does
    validate_config(config)  # ray/autoscaler/ray-schema.json + Ray's cross-field checks
    assert config["docker"]["image"] == image_ref()


def test_rays_validation_is_not_a_rubber_stamp():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = launcher("aws-gpu.yaml")
    bad["available_node_types"]["gpu-spot"]["min_worker"] = 0  # typo'd key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = launcher("aws-gpu.yaml")
    del bad["available_node_types"]["gpu-spot"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_aws_config_autoscales_spot_gpu_workers_from_zero():
    config = launcher("aws-gpu.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"] and "InstanceMarketOptions" not in head["node_config"], \
        "the head is an on-demand CPU node"
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu, "a GPU worker type"
    for name, t in gpu.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
        assert t["node_config"]["InstanceType"].startswith(("g5.", "g6", "p4d", "p5")), name
    for name, t in workers.items():
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Name"].startswith("finedetail-ray-"), name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert 1 <= config["idle_timeout_minutes"] <= 60
    assert config["provider"]["cache_stopped_nodes"] is False, "spot nodes are terminated, not stopped"


def test_iam_policies_match_the_instance_profiles_and_readme():
    docs = {p.name: json.loads(p.read_text()) for p in (CLUSTER / "aws-iam").glob("*.json")}
    assert set(docs) == {"ec2-trust.json", "head-policy.json", "worker-policy.json"}
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"]
                for t in launcher("aws-gpu.yaml")["available_node_types"].values()}
    assert profiles == {"finedetail-ray-head", "finedetail-ray-worker"}
    passrole = [s for s in docs["head-policy.json"]["Statement"] if "iam:PassRole" in s["Action"]]
    assert any("finedetail-ray-worker" in r for s in passrole for r in s["Resource"])
    section = readme_section()
    for profile in profiles:
        role = profile.removeprefix("finedetail-ray-")
        assert f"cluster/aws-iam/{role}-policy.json" in section.replace("$role", role)


def test_no_credentials_in_any_deployment_file():
    files = [ROOT / "Dockerfile", *CLUSTER.rglob("*.y*ml"), *CLUSTER.rglob("*.json"), CLUSTER / "IMAGE"]
    for path in files:
        assert not SECRET_RE.search(path.read_text()), f"{path} holds a credential"


# --------------------------------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------------------------------


def test_rayjob_runs_the_job_and_cleans_up():
    job = kube_kind("kuberay/rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["FINEDETAIL_CACHE"] == dockerfile_env()["FINEDETAIL_CACHE"]


def test_rayjob_entrypoint_is_a_valid_job_command():
    argv = shlex.split(kube_kind("kuberay/rayjob.yaml", "RayJob")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "job"]
    assert importlib.util.find_spec("job.__main__") is not None
    ns, cfg = parse_job_args(argv[3:])
    # the GPU group starts at zero pods: "auto" would see no GPU at start and plan CPU-only model stages
    assert ns.gpu == "on" and cfg.resources.gpu == "on"
    assert cfg.input.startswith("s3://") and cfg.output.startswith("s3://")


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_cluster_spec(name):
    spec = cluster_spec(name)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == constraint_pins()["ray"], "rayVersion is the Ray in the image"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"].get("limits", {})
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "a GPU worker group"
    for g in gpu_groups:
        assert g["minReplicas"] == 0 and g.get("replicas", 0) == 0 and g["maxReplicas"] >= 1, g["groupName"]
        for c in g["template"]["spec"]["containers"]:
            res = c["resources"]
            assert int(res["limits"]["nvidia.com/gpu"]) >= 1
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    accounts = {d["metadata"]["name"] for d in kube_docs(name) if d["kind"] == "ServiceAccount"}
    for group, pod in pod_templates(spec):
        assert pod["serviceAccountName"] in accounts, group
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, group
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert {"/cache", "/dev/shm"} <= mounts, group


def test_raycluster_and_rayjob_describe_the_same_cluster():
    assert cluster_spec("kuberay/raycluster.yaml") == cluster_spec("kuberay/rayjob.yaml")


# --------------------------------------------------------------------------------------------------------------------
# One image everywhere
# --------------------------------------------------------------------------------------------------------------------


def all_image_uses() -> dict[str, str]:
    uses = {name: launcher(name)["docker"]["image"] for name in LAUNCHER_CONFIGS}
    for name in KUBERAY:
        for group, pod in pod_templates(cluster_spec(name)):
            for c in pod["containers"]:
                uses[f"{name}:{group}:{c['name']}"] = c["image"]
    return uses


def test_the_image_is_declared_once_and_used_everywhere():
    ref = image_ref()
    assert re.fullmatch(r"[a-z0-9.\-/:]+/[a-z0-9._\-]+:[A-Za-z0-9._\-]+", ref), ref
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert ref.rsplit(":", 1)[1].startswith(version), "the image tag follows the package version"
    assert set(all_image_uses().values()) == {ref}, all_image_uses()
    section = readme_section()
    assert 'docker build -t "$(cat cluster/IMAGE)"' in section and 'docker push "$(cat cluster/IMAGE)"' in section


def test_set_image_rewrites_every_reference(tmp_path):
    if shutil.which("bash") is None or shutil.which("sed") is None:
        pytest.skip("needs bash and sed")
    copy = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    new = "registry.example.com/team/finedetail:0.1.0-test"
    subprocess.run(["bash", str(copy / "set-image.sh"), new], check=True, capture_output=True, text=True)
    assert (copy / "IMAGE").read_text().strip() == new
    for name in LAUNCHER_CONFIGS:
        assert yaml.safe_load((copy / name).read_text())["docker"]["image"] == new
    for name in KUBERAY:
        docs = [d for d in yaml.safe_load_all((copy / name).read_text()) if d]
        spec = next(d["spec"].get("rayClusterSpec", d["spec"]) for d in docs if d["kind"] in ("RayJob", "RayCluster"))
        assert {c["image"] for _, pod in pod_templates(spec) for c in pod["containers"]} == {new}


# --------------------------------------------------------------------------------------------------------------------
# Dockerfile (read as a file: there is no Docker engine here)
# --------------------------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines, buf = [], ""
    for raw in text.splitlines():
        if not buf and (raw.strip().startswith("#") or not raw.strip()):
            continue
        if buf and raw.strip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        lines.append(buf + raw)
        buf = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins, arg in dockerfile_instructions():
        if ins == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((ins, arg))
    return stages


def dockerfile_args() -> dict[str, str]:
    out = {}
    for ins, arg in dockerfile_instructions():
        if ins == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


def dockerfile_env() -> dict[str, str]:
    out = {}
    for ins, arg in dockerfile_instructions():
        if ins == "ENV":
            for item in shlex.split(arg):
                k, v = item.split("=", 1)
                out[k] = v
    return out


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: tokens split on the operators && || ; | & (quotes respected)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    cmds, cur = [], []
    for tok in lexer:
        if tok and set(tok) <= set("&|;"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    return [c for c in cmds if c]


def pip_commands() -> list[list[str]]:
    """Every `pip install` / `pip wheel` invocation in a RUN instruction, as argv after `pip`."""
    cmds = []
    for ins, arg in dockerfile_instructions():
        if ins != "RUN":
            continue
        for words in shell_commands(arg):
            while words and words[0].startswith("--"):  # RUN flags: --mount=..., --network=...
                words = words[1:]
            for i, w in enumerate(words):
                if w in ("pip", "pip3") or w.endswith("/pip") or (w == "-m" and i + 1 < len(words)
                                                                     and words[i + 1] == "pip"):
                    j = i + (2 if w == "-m" else 1)
                    if j < len(words) and words[j] in ("install", "wheel"):
                        cmds.append(words[j:])
                    break
    return cmds


PIP_OPTS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "--find-links", "-f", "--wheel-dir", "-w",
                       "--index-url", "-i", "--extra-index-url", "--target", "-t", "--prefix", "--root"}


def pip_targets(cmd: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    targets, opts, i = [], {}, 1
    while i < len(cmd):
        w = cmd[i]
        if w in PIP_OPTS_WITH_VALUE:
            opts.setdefault(w, []).append(cmd[i + 1])
            i += 2
            continue
        if w.startswith("-"):
            opts.setdefault(w.split("=", 1)[0], []).append(w.partition("=")[2])
        else:
            targets.append(w)
        i += 1
    return targets, opts


def test_dockerfile_installs_exactly_pyprojects_package_set():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cmds = pip_commands()
    assert [c[0] for c in cmds] == ["wheel", "install"], "build stage: pip wheel; runtime stage: pip install"
    installed_names: set[str] = set()
    for cmd in cmds:
        targets, opts = pip_targets(cmd)
        assert "-r" not in opts and "--requirement" not in opts, "no second list of packages besides pyproject.toml"
        constraints = opts.get("-c", []) + opts.get("--constraint", [])
        assert constraints and all(c.endswith("constraints.txt") for c in constraints), cmd
        assert len(targets) == 1, f"the only install target is the project itself: {cmd}"
        m = re.fullmatch(r"(\.|/[\w/.\-]*|finedetail)(?:\[([\w,\-]+)\])?", targets[0])
        assert m, f"install target {targets[0]!r} is not the project"
        extras = tuple(sorted((m.group(2) or "").split(","))) if m.group(2) else ()
        assert extras == tuple(sorted(mc.EXTRAS)), (extras, mc.EXTRAS)
        installed_names |= {mc.canon(Requirement(r).name) for r in project["dependencies"]}
        for extra in extras:
            installed_names |= {mc.canon(Requirement(r).name) for r in project["optional-dependencies"][extra]}
    expected = {mc.canon(r.name) for r in mc.top_level()}
    assert installed_names == expected
    # the constraints pin every one of them, inside pyproject's ranges
    pins = constraint_pins()
    for req in mc.top_level():
        name = mc.canon(req.name)
        assert name in pins, f"{name} is not pinned in cluster/constraints.txt: run cluster/make_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"


def test_constraints_file_only_pins():
    seen = set()
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._\-]*)==([A-Za-z0-9.+!\-]+)", line)
        assert m, f"not an exact pin: {line!r}"
        name = mc.canon(m.group(1))
        assert name not in seen, f"{name} pinned twice"
        assert name not in mc.SKIP
        seen.add(name)


def test_dockerfile_base_image_is_a_pinned_ray_gpu_image():
    base = dockerfile_args()["BASE_IMAGE"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+|gpu)", base)
    assert m, f"BASE_IMAGE {base!r} is not an exact rayproject/ray GPU tag"
    assert m.group(1) == constraint_pins()["ray"], "the image's Ray is the pinned Ray"
    py = f"{m.group(2)}.{m.group(3)}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires).contains(py + ".0"), (py, requires)
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: compilers stay in the build stage"
    for stage in stages:
        assert stage[0][1].split()[0] in ("${BASE_IMAGE}", "$BASE_IMAGE"), stage[0]
    final = stages[-1]
    final_runs = " ".join(a for i, a in final if i == "RUN")
    assert "build-essential" not in final_runs and "--from=build" in final_runs.replace("from=build", "--from=build")


def test_dockerfile_runs_as_non_root_with_a_cache_volume_and_no_weights():
    final = dockerfile_stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    env = dockerfile_env()
    assert env["FINEDETAIL_CACHE"] == "/cache"
    volumes = [a for i, a in final if i == "VOLUME"]
    assert any("/cache" in v for v in volumes)
    args = dockerfile_args()
    assert args["SAM_CHECKPOINT_URL"] == "" and args["SEGGPT_CHECKPOINT"] == "", "no weights baked in by default"
    runs = " ".join(a for i, a in final if i == "RUN")
    assert "python -m job run --help" in runs, "the build checks that `python -m job` runs"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, p) for prefix in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_heavy():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for ins, arg in dockerfile_instructions():
        if ins == "COPY" and "--from" not in arg:
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, patterns), f"{src} is copied but .dockerignore drops it"
        if (ROOT / src).is_dir():
            some = next((ROOT / src).rglob("*.py"))
            assert not _dockerignored(str(some.relative_to(ROOT)), patterns)
    for heavy in (".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD", "tests/test_cluster.py",
                  "finedetail/__pycache__/x.pyc", "sam_vit_h_4b8939.pth"):
        assert _dockerignored(heavy, patterns), heavy


# --------------------------------------------------------------------------------------------------------------------
# Runtime env for `ray job submit --working-dir .`
# --------------------------------------------------------------------------------------------------------------------


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**data)  # Ray's own field validation
    assert env["env_vars"]["FINEDETAIL_CACHE"] == dockerfile_env()["FINEDETAIL_CACHE"]
    assert not any("SECRET" in k or "TOKEN" in k or "ACCESS_KEY" in k for k in env["env_vars"])
    assert {".venv/", ".git/"} <= set(data["excludes"])
    assert "pip" not in data and "conda" not in data, "dependencies come from the image, pinned"


# --------------------------------------------------------------------------------------------------------------------
# README: the cluster section's commands are copy-pasteable
# --------------------------------------------------------------------------------------------------------------------


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Running on a cluster\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def readme_commands() -> list[list[str]]:
    """Simple commands of the section's ```bash blocks (continuations joined, split on && ; | and newlines)."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(), re.S)
    assert blocks
    cmds = []
    for block in blocks:
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            cmds += shell_commands(line)
    return cmds


@pytest.fixture(scope="module")
def submit_help() -> str:
    ray_bin = Path(sys.executable).parent / "ray"
    out = subprocess.run([str(ray_bin), "job", "submit", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _ray_command(words: list[str]):
    from ray.scripts.scripts import cli

    cmd, rest = cli, words[1:]
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    assert cmd is not cli, f"unknown ray command: {words}"
    return cmd, rest


def test_readme_ray_commands_parse_with_rays_cli(submit_help):
    ray_cmds = [w for w in readme_commands() if w[0] == "ray"]
    assert ("ray", "job", "submit") in {tuple(w[:3]) for w in ray_cmds}
    assert {w[1] for w in ray_cmds} >= {"up", "dashboard", "down", "job"}
    for words in ray_cmds:
        cmd, rest = _ray_command(words)
        cmd.make_context(" ".join(words[:3]), list(rest))  # raises click.UsageError on an unknown flag
        for path in (w for w in rest if w.startswith("cluster/")):
            assert (ROOT / path).exists(), path


def test_readme_job_submissions_use_real_flags_and_a_valid_job_command(submit_help):
    submits = [w for w in readme_commands() if w[:3] == ["ray", "job", "submit"]]
    assert len(submits) >= 2
    help_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", submit_help))
    for words in submits:
        sep = words.index("--")
        flags = [w.split("=", 1)[0] for w in words[3:sep] if w.startswith("--")]
        assert set(flags) <= help_flags, set(flags) - help_flags
        assert "--working-dir" in flags and "--runtime-env" in flags
        runtime_env = words[words.index("--runtime-env") + 1]
        assert (ROOT / runtime_env).is_file()
        entry = words[sep + 1:]
        assert entry[:4] == ["python", "-m", "job", "run"], entry
        ns, cfg = parse_job_args(entry[3:])
        assert ns.gpu == "on", "an autoscaling cluster starts without GPUs: the README must pass --gpu on"


def test_readme_python_job_commands_parse():
    cmds = [w for w in readme_commands() if w[:3] == ["python", "-m", "job"]]
    for words in cmds:
        parse_job_args(words[3:])


def test_readme_mentions_only_existing_cluster_files():
    for path in set(re.findall(r"cluster/[\w./\-]+[\w]", readme_section())):
        if "$" in path:
            continue
        assert (ROOT / path).exists(), path


# --------------------------------------------------------------------------------------------------------------------
# Baking weights (the Dockerfile's optional step) uses the project's loaders: tiny checkpoints, no network
# --------------------------------------------------------------------------------------------------------------------


def test_bake_weights_copies_and_verifies_a_sam_checkpoint(tmp_path):
    bake = _load_module("bake_weights", CLUSTER / "bake_weights.py")
    src = tmp_path / "src" / "sam_tiny.pth"
    src.parent.mkdir()
    src.write_bytes(b"not really a checkpoint, but bytes with a digest")
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = bake.bake_sam(str(src), tmp_path / "weights", sha256=digest)
    assert out == tmp_path / "weights" / "sam_tiny.pth" and out.read_bytes() == src.read_bytes()
    with pytest.raises(ValueError):
        bake.bake_sam(str(src), tmp_path / "weights2", sha256="0" * 64)
