"""environment.yml (conda) and pyproject.toml (pip) must pin the same packages."""

import tomllib

import yaml

from tests.conftest import REPO_ROOT


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda_pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert set(conda_pip) - {"-e ."} == pip_deps
    assert "python=3.11" in env["dependencies"]
    assert all("==" in dep for dep in pip_deps), "every dependency is pinned exactly"


def test_installed_versions_match_pins():
    import importlib.metadata

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name, version = dep.split("==")
        installed = importlib.metadata.version(name.split("[")[0])
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
