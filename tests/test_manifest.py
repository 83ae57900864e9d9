"""manifest.toml parsing and validation (ABI.md "manifest.toml", POLYPLUG_V1_SPEC.md §E).

Pure unit tests: manifests are written into ``tmp_path``; no worker process runs and no
library is opened (the library files are empty).
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyplug_isolated._ids import fnv1a64
from polyplug_isolated._manifest import ManifestData, bundle_directory, parse_manifest, platform_key
from polyplug_isolated.errors import InitFailed, LoaderError, ManifestError, ManifestMissingFile

NAME = "test_plugin"
ID = 11175554700064995833  # fnv1a64("test_plugin"), ABI.md
LIB = "libtest_plugin.so"
PLATFORM = platform_key()
OTHER_PLATFORM = "plan9.mips" if PLATFORM != "plan9.mips" else "haiku.m68k"

# Top-level keys of a valid manifest, as raw TOML values. Overrides replace a value;
# DROP removes the key. Keys are written in this order, before any extra [table] text.
BASE: dict[str, str] = {
    "id": str(ID),
    "name": f'"{NAME}"',
    "version": '"1.0"',
    "loader": '"native"',
    "provides": '["test.add@1"]',
    "function_count": '{ "test.add@1" = 1 }',
    "file": f'{{ {PLATFORM} = "{LIB}" }}',
}
DROP = object()


def render(overrides: dict[str, object] | None = None, extra: str = "") -> str:
    fields = {**BASE, **(overrides or {})}
    lines = [f"{key} = {value}" for key, value in fields.items() if value is not DROP]
    return "\n".join(lines) + "\n" + extra


def make_bundle(
    directory: Path,
    overrides: dict[str, object] | None = None,
    extra: str = "",
    *,
    text: str | None = None,
    library: str | None = LIB,
) -> Path:
    """Writes ``directory/manifest.toml`` (``text`` verbatim, else BASE + overrides) and an empty library."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.toml").write_text(render(overrides, extra) if text is None else text)
    if library is not None:
        (directory / library).touch()
    return directory


@pytest.fixture
def bdir(tmp_path: Path) -> Path:
    return tmp_path / "bundle"


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string."""
    out = []
    for char in value:
        if char in '"\\' or unicodedata.category(char) == "Cc":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --------------------------------------------------------------------------- valid manifests


def test_platform_key_shape() -> None:
    os_name, arch = PLATFORM.split(".")
    assert os_name and arch
    if os.uname().sysname == "Linux":
        assert os_name == "linux"


def test_valid_manifest_fields(bdir: Path) -> None:
    make_bundle(bdir)
    data = parse_manifest(bdir)
    assert isinstance(data, ManifestData)
    assert data.id == ID
    assert data.name == NAME
    assert data.version == "1.0"
    assert data.version_major == "1"
    assert data.loader == "native"
    assert data.provides == ("test.add@1",)
    assert data.function_count == {"test.add@1": 1}
    assert data.path == bdir
    assert data.file.is_absolute()
    assert data.file == (bdir / LIB).resolve()
    assert data.file.parent == bdir.resolve()


def test_file_as_table(bdir: Path) -> None:
    table = f'[file]\n{PLATFORM} = "{LIB}"\n{OTHER_PLATFORM} = "libother.so"\n'
    make_bundle(bdir, {"file": DROP}, table)
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


def test_file_as_abi_md_example(bdir: Path) -> None:
    """The exact manifest from ABI.md (both linux arches), with [function_count] as a table."""
    text = f"""\
id = {ID}      # required, u64, non-zero (fnv1a64 of name)
name = "test_plugin"            # required
version = "1.0"
loader = "native"               # required: the loader key ("native")
provides = ["test.add"]
[file]                          # the library per platform: os.arch
linux.x86_64 = "{LIB}"
linux.aarch64 = "{LIB}"
{PLATFORM} = "{LIB}"
[function_count]
"test.add@1" = 1
"""
    if PLATFORM in ("linux.x86_64", "linux.aarch64"):
        text = text.replace(f'{PLATFORM} = "{LIB}"\n[function_count]', "[function_count]")
    make_bundle(bdir, text=text)
    data = parse_manifest(bdir)
    assert data.provides == ("test.add",)
    assert data.function_count == {"test.add@1": 1}
    assert data.file == (bdir / LIB).resolve()


def test_file_as_plain_string(bdir: Path) -> None:
    make_bundle(bdir, {"file": f'"{LIB}"'})
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


def test_file_as_inline_nested_table(bdir: Path) -> None:
    os_name, arch = PLATFORM.split(".")
    make_bundle(bdir, {"file": f'{{ {os_name} = {{ {arch} = "{LIB}" }} }}'})
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


def test_file_in_subdirectory(bdir: Path) -> None:
    (bdir / "lib").mkdir(parents=True)
    make_bundle(bdir, {"file": '"lib/../lib/libx.so"'}, library="lib/libx.so")
    assert parse_manifest(bdir).file == (bdir / "lib" / "libx.so").resolve()


def test_symlink_inside_bundle_is_accepted(bdir: Path) -> None:
    make_bundle(bdir, {"file": '"link.so"'})
    (bdir / "link.so").symlink_to(LIB)
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


def test_hex_id(bdir: Path) -> None:
    make_bundle(bdir, {"id": f"0x{ID:X}"})
    assert parse_manifest(bdir).id == ID


def test_decimal_id_above_2_63(bdir: Path) -> None:
    assert ID > 2**63
    make_bundle(bdir, {"id": str(ID)})
    assert parse_manifest(bdir).id == ID


def test_id_below_2_63(bdir: Path) -> None:
    name = next(n for n in (f"b{i}" for i in range(100)) if fnv1a64(n) < 2**63)
    make_bundle(bdir, {"name": f'"{name}"', "id": str(fnv1a64(name))})
    data = parse_manifest(bdir)
    assert (data.name, data.id) == (name, fnv1a64(name))


def test_library_path_means_its_directory(bdir: Path) -> None:
    make_bundle(bdir)
    assert bundle_directory(bdir / LIB) == bdir
    assert bundle_directory(bdir) == bdir
    from_file = parse_manifest(bdir / LIB)
    assert from_file == parse_manifest(bdir)
    assert from_file.path == bdir


def test_manifest_path_means_its_directory(bdir: Path) -> None:
    make_bundle(bdir)
    assert parse_manifest(bdir / "manifest.toml").path == bdir


def test_str_path_accepted(bdir: Path) -> None:
    make_bundle(bdir)
    assert parse_manifest(str(bdir)).name == NAME


def test_relative_path_gives_absolute_file(bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bundle(bdir)
    monkeypatch.chdir(bdir.parent)
    data = parse_manifest(bdir.name)
    assert data.file.is_absolute()
    assert data.file == (bdir / LIB).resolve()


def test_relative_path_gives_absolute_bundle_path(bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``path`` becomes the plugin's BundleInitContext.bundle_path: it must not depend on the cwd."""
    make_bundle(bdir)
    monkeypatch.chdir(bdir.parent)
    assert parse_manifest(bdir.name).path.is_absolute()


def test_optional_keys_default(bdir: Path) -> None:
    make_bundle(bdir, {"version": DROP, "provides": DROP, "function_count": DROP})
    data = parse_manifest(bdir)
    assert data.version == ""
    assert data.version_major == "0"
    assert data.provides == ()
    assert data.function_count == {}


@pytest.mark.parametrize(
    ("version", "key"),
    [
        pytest.param('"1.0"', "test.add@1", id="major.minor"),
        pytest.param('"2.3.4"', "test.add@2", id="major.minor.patch"),
        pytest.param('""', "test.add@0", id="empty-version-means-major-0"),
        pytest.param(DROP, "test.add@0", id="no-version-means-major-0"),
    ],
)
def test_provides_key_uses_bundle_version_major(bdir: Path, version: object, key: str) -> None:
    make_bundle(
        bdir, {"version": version, "provides": '["test.add"]', "function_count": f'{{ "{key}" = 3 }}'}
    )
    data = parse_manifest(bdir)
    assert data.function_count == {key: 3}
    assert data.provides == ("test.add",)


@pytest.mark.parametrize(
    "provides",
    [
        pytest.param('["test.add"]', id="bare-name"),
        pytest.param('["test.add@1"]', id="name@major"),
        pytest.param('["test.add@1.0"]', id="name@major.minor"),
        pytest.param('["test.add@1.0.0"]', id="name@major.minor.patch"),
        pytest.param('["test.add@7"]', id="entry-major-differs-key-uses-bundle-major"),
        pytest.param("[]", id="empty-list"),
    ],
)
def test_provides_entries_accepted(bdir: Path, provides: str) -> None:
    make_bundle(bdir, {"provides": provides})
    assert parse_manifest(bdir).name == NAME


def test_function_count_extra_keys_and_bounds(bdir: Path) -> None:
    make_bundle(bdir, {"function_count": '{ "test.add@1" = 0, "other@9" = 4294967295 }'})
    assert parse_manifest(bdir).function_count == {"test.add@1": 0, "other@9": 2**32 - 1}


def test_unknown_keys_ignored(bdir: Path) -> None:
    extra = (
        "[[dependency]]\n"
        'kind = "contract"\ncontract = "x.y"\nmin_version = "1.0"\n'
        "[some_future_table]\nanything = [1, 2, 3]\n"
    )
    make_bundle(
        bdir,
        {
            "runtime": '"native"',
            "bundle_name": '"old"',
            "needs_reinit_on_dep_reload": "true",
            "bundle_dependencies": '["a@1"]',
            "mystery": "{ a = 1 }",
        },
        extra,
    )
    data = parse_manifest(bdir)
    assert (data.name, data.id, data.loader) == (NAME, ID, "native")


# --------------------------------------------------------------------------- malformed manifests


def test_no_manifest(bdir: Path) -> None:
    bdir.mkdir()
    with pytest.raises(ManifestError, match="no manifest.toml") as info:
        parse_manifest(bdir)
    assert str(bdir) in str(info.value)
    assert info.value.bundle == str(bdir)


def test_directory_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.toml") as info:
        parse_manifest(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_manifest_is_a_directory(bdir: Path) -> None:
    (bdir / "manifest.toml").mkdir(parents=True)
    with pytest.raises(ManifestError) as info:
        parse_manifest(bdir)
    assert str(bdir / "manifest.toml") in str(info.value)
    assert info.value.bundle == str(bdir)


def test_manifest_not_utf8(bdir: Path) -> None:
    bdir.mkdir()
    (bdir / "manifest.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(ManifestError) as info:
        parse_manifest(bdir)
    assert str(bdir / "manifest.toml") in str(info.value)


def test_invalid_toml_names_the_line(bdir: Path) -> None:
    make_bundle(bdir, text=render() + "this is = = not toml\n")
    with pytest.raises(ManifestError, match="not valid TOML") as info:
        parse_manifest(bdir)
    message = str(info.value)
    assert str(bdir / "manifest.toml") in message
    assert f"line {len(BASE) + 1}" in message
    assert info.value.bundle == str(bdir)


def test_plain_file_after_a_table_belongs_to_that_table(bdir: Path) -> None:
    """``file = "..."`` written after a [table] belongs to that table (spec §E): no top-level file."""
    make_bundle(bdir, {"file": DROP, "function_count": DROP}, '[function_count]\n"test.add@1" = 1\n')
    with (bdir / "manifest.toml").open("a") as f:
        f.write(f'file = "{LIB}"\n')
    with pytest.raises(ManifestError, match="function_count"):
        parse_manifest(bdir)


# (id, overrides, extra [table] text, error class, fragments the message must contain)
MALFORMED = [
    # loader
    pytest.param({"loader": DROP}, "", ManifestError, ["missing field `loader`"], id="loader-missing"),
    pytest.param({"loader": '""'}, "", ManifestError, ["`loader`", "non-empty"], id="loader-empty"),
    pytest.param({"loader": "5"}, "", ManifestError, ["`loader`"], id="loader-not-string"),
    pytest.param({"loader": '"lua"'}, "", ManifestError, ["loader 'lua'", "'native'"], id="loader-unknown"),
    pytest.param(
        {"loader": DROP, "runtime": '"native"'},
        "",
        ManifestError,
        ["`loader`", "`runtime = ...` is not read"],
        id="runtime-instead-of-loader",
    ),
    # id
    pytest.param(
        {"id": DROP}, "", InitFailed, ["manifest.id is required but was 0 or missing"], id="id-missing"
    ),
    pytest.param({"id": "0"}, "", InitFailed, ["manifest.id is required but was 0 or missing"], id="id-zero"),
    pytest.param({"id": f'"{ID}"'}, "", ManifestError, ["`id`", "integer", "str"], id="id-string"),
    pytest.param({"id": "1.5"}, "", ManifestError, ["`id`", "integer", "float"], id="id-float"),
    pytest.param({"id": "true"}, "", ManifestError, ["`id`", "integer", "bool"], id="id-bool"),
    pytest.param({"id": "-1"}, "", ManifestError, ["`id`", "-1", "64-bit"], id="id-negative"),
    pytest.param({"id": f"-{ID}"}, "", ManifestError, ["`id`", "64-bit"], id="id-negative-large"),
    pytest.param({"id": str(2**64)}, "", ManifestError, ["`id`", "64-bit"], id="id-above-u64"),
    pytest.param(
        {"id": str(ID + 1)},
        "",
        ManifestError,
        ["tampered", f"expected=0x{ID:016X}", f"found=0x{ID + 1:016X}"],
        id="id-tampered",
    ),
    pytest.param(
        {"id": str(fnv1a64("other"))}, "", ManifestError, ["tampered", "bundle_id"], id="id-of-other-name"
    ),
    # version
    pytest.param({"version": '"1"'}, "", ManifestError, ["invalid version '1'"], id="version-major-only"),
    pytest.param(
        {"version": '"1.0.0-beta"'},
        "",
        ManifestError,
        ["invalid version '1.0.0-beta'"],
        id="version-prerelease",
    ),
    pytest.param({"version": '"1.0.0.0"'}, "", ManifestError, ["invalid version"], id="version-four-parts"),
    pytest.param({"version": '"v1.0"'}, "", ManifestError, ["invalid version"], id="version-v-prefix"),
    pytest.param({"version": '"1.0 "'}, "", ManifestError, ["invalid version"], id="version-trailing-space"),
    pytest.param({"version": "5"}, "", ManifestError, ["`version`", "string"], id="version-integer"),
    pytest.param({"version": "1.0"}, "", ManifestError, ["`version`", "string"], id="version-float"),
    # provides
    pytest.param(
        {"provides": '"test.add@1"'}, "", ManifestError, ["`provides`", "array"], id="provides-string"
    ),
    pytest.param({"provides": "{ a = 1 }"}, "", ManifestError, ["`provides`", "array"], id="provides-table"),
    pytest.param({"provides": "[1]"}, "", ManifestError, ["`provides`", "strings"], id="provides-int-entry"),
    pytest.param({"provides": '[""]'}, "", ManifestError, ["provides entry ''"], id="provides-empty-entry"),
    pytest.param(
        {"provides": '["x@"]'}, "", ManifestError, ["provides entry 'x@'"], id="provides-no-version"
    ),
    pytest.param({"provides": '["@1"]'}, "", ManifestError, ["provides entry '@1'"], id="provides-no-name"),
    pytest.param(
        {"provides": '["x@a"]'}, "", ManifestError, ["provides entry 'x@a'"], id="provides-bad-version"
    ),
    pytest.param(
        {"provides": '["x@1.2.3.4"]'}, "", ManifestError, ["provides entry 'x@1.2.3.4'"], id="provides-4-part"
    ),
    pytest.param(
        {"provides": '["x@1@2"]'}, "", ManifestError, ["provides entry 'x@1@2'"], id="provides-two-at"
    ),
    pytest.param({"provides": '["a b"]'}, "", ManifestError, ["provides entry 'a b'"], id="provides-space"),
    # function_count
    pytest.param({"function_count": "3"}, "", ManifestError, ["`function_count`", "table"], id="fc-int"),
    pytest.param({"function_count": "[1]"}, "", ManifestError, ["`function_count`", "table"], id="fc-array"),
    pytest.param(
        {"function_count": '{ "test.add@1" = "1" }'},
        "",
        ManifestError,
        ["function_count['test.add@1']", "unsigned 32-bit", "'1'"],
        id="fc-string-value",
    ),
    pytest.param(
        {"function_count": '{ "test.add@1" = -1 }'},
        "",
        ManifestError,
        ["function_count['test.add@1']", "-1"],
        id="fc-negative",
    ),
    pytest.param(
        {"function_count": '{ "test.add@1" = 1.0 }'},
        "",
        ManifestError,
        ["function_count['test.add@1']", "1.0"],
        id="fc-float",
    ),
    pytest.param(
        {"function_count": '{ "test.add@1" = true }'},
        "",
        ManifestError,
        ["function_count['test.add@1']", "True"],
        id="fc-bool",
    ),
    pytest.param(
        {"function_count": f'{{ "test.add@1" = {2**32} }}'},
        "",
        ManifestError,
        ["function_count['test.add@1']", str(2**32)],
        id="fc-above-u32",
    ),
    pytest.param(
        {"function_count": DROP},
        "",
        ManifestError,
        ["provides 'test.add@1'", "[function_count] has no key 'test.add@1'"],
        id="fc-missing-for-provides",
    ),
    pytest.param(
        {"function_count": '{ "test.sub@1" = 1 }'},
        "",
        ManifestError,
        ["[function_count] has no key 'test.add@1'"],
        id="fc-key-for-other-contract",
    ),
    pytest.param(
        {"version": '"2.0"'},
        "",
        ManifestError,
        ["provides 'test.add@1'", "no key 'test.add@2'"],
        id="fc-key-uses-bundle-major-not-entry-major",
    ),
    pytest.param(
        {"version": DROP},
        "",
        ManifestError,
        ["`version` is missing", "'test.add@0'", 'version = "1.0.0"'],
        id="fc-key-major-0-without-version",
    ),
    # file
    pytest.param(
        {"file": DROP},
        f'[file]\n{OTHER_PLATFORM} = "{LIB}"\n',
        ManifestMissingFile,
        [f"no file entry for platform {PLATFORM}", OTHER_PLATFORM],
        id="file-table-other-platform-only",
    ),
    pytest.param(
        {"file": "{}"},
        "",
        ManifestMissingFile,
        [f"no file entry for platform {PLATFORM}", "available: []"],
        id="file-empty-table",
    ),
    pytest.param(
        {"file": f'{{ {PLATFORM.split(".")[0]}.other_arch = "{LIB}" }}'},
        "",
        ManifestMissingFile,
        [f"no file entry for platform {PLATFORM}", f"{PLATFORM.split('.')[0]}.other_arch"],
        id="file-table-same-os-other-arch",
    ),
    pytest.param({"file": DROP}, "", ManifestMissingFile, ["`file`", "empty or missing"], id="file-missing"),
    pytest.param(
        {"file": '""'}, "", ManifestMissingFile, ["`file`", "empty or missing"], id="file-empty-string"
    ),
    pytest.param(
        {"file": f'{{ {PLATFORM} = "" }}'},
        "",
        ManifestMissingFile,
        ["`file`", "empty or missing"],
        id="file-table-empty-string",
    ),
    pytest.param({"file": "5"}, "", ManifestError, ["`file`", "string"], id="file-integer"),
    pytest.param({"file": f'["{LIB}"]'}, "", ManifestError, ["`file`", "string"], id="file-array"),
    pytest.param(
        {"file": f"{{ {PLATFORM} = 5 }}"}, "", ManifestError, ["`file`", "string"], id="file-table-int"
    ),
    pytest.param(
        {"file": '"../escape.so"'},
        "",
        ManifestError,
        ["'../escape.so'", "outside the bundle directory"],
        id="file-dotdot-escape",
    ),
    pytest.param(
        {"file": f'{{ {PLATFORM} = "sub/../../escape.so" }}'},
        "",
        ManifestError,
        ["'sub/../../escape.so'", "outside the bundle directory"],
        id="file-table-dotdot-escape",
    ),
    pytest.param(
        {"file": '"/usr/lib/libc.so.6"'},
        "",
        ManifestError,
        ["'/usr/lib/libc.so.6'", "outside the bundle directory"],
        id="file-absolute-outside",
    ),
]


@pytest.mark.parametrize(("overrides", "extra", "error", "fragments"), MALFORMED)
def test_malformed_manifest(
    bdir: Path,
    overrides: dict[str, object],
    extra: str,
    error: type[LoaderError],
    fragments: list[str],
) -> None:
    make_bundle(bdir, overrides, extra)
    with pytest.raises(error) as info:
        parse_manifest(bdir)
    assert type(info.value) is error
    assert isinstance(info.value, LoaderError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    # names the bundle (and, for manifest errors, the manifest file)
    assert info.value.bundle == NAME
    assert repr(NAME) in message
    if error is not InitFailed:
        assert str(bdir / "manifest.toml") in message


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(DROP, id="name-missing"),
        pytest.param('""', id="name-empty"),
        pytest.param("5", id="name-integer"),
        pytest.param('["test_plugin"]', id="name-array"),
        pytest.param("{ a = 1 }", id="name-table"),
    ],
)
def test_bad_name(bdir: Path, name: object) -> None:
    make_bundle(bdir, {"name": name})
    with pytest.raises(ManifestError, match="`name` is required and must be a non-empty string") as info:
        parse_manifest(bdir)
    assert info.value.bundle == str(bdir)
    assert str(bdir / "manifest.toml") in str(info.value)


def test_absolute_path_inside_bundle_is_accepted(bdir: Path) -> None:
    make_bundle(bdir, {"file": toml_string(str(bdir / LIB))})
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


def test_absolute_path_to_sibling_directory(tmp_path: Path, bdir: Path) -> None:
    """``/x/bundle2/lib.so`` must not pass as inside ``/x/bundle`` (prefix, not path, comparison)."""
    sibling = tmp_path / (bdir.name + "2")
    sibling.mkdir()
    (sibling / LIB).touch()
    make_bundle(bdir, {"file": toml_string(str(sibling / LIB))})
    with pytest.raises(ManifestError, match="outside the bundle directory"):
        parse_manifest(bdir)


def test_symlink_pointing_outside(tmp_path: Path, bdir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / LIB).touch()
    make_bundle(bdir, library=None)
    (bdir / LIB).symlink_to(outside / LIB)
    with pytest.raises(ManifestError, match="outside the bundle directory") as info:
        parse_manifest(bdir)
    assert info.value.bundle == NAME
    assert repr(LIB) in str(info.value)


def test_symlinked_subdirectory_pointing_outside(tmp_path: Path, bdir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / LIB).touch()
    make_bundle(bdir, {"file": f'"lib/{LIB}"'}, library=None)
    (bdir / "lib").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ManifestError, match="outside the bundle directory"):
        parse_manifest(bdir)


def test_symlinked_bundle_directory_is_fine(tmp_path: Path, bdir: Path) -> None:
    """The bundle directory itself may be reached through a symlink; the library stays inside it."""
    make_bundle(bdir)
    link = tmp_path / "link"
    link.symlink_to(bdir, target_is_directory=True)
    data = parse_manifest(link)
    assert data.file == (bdir / LIB).resolve()


def test_missing_library_is_not_a_manifest_error(bdir: Path) -> None:
    """Existence is checked at load time (InitFailed there), not by the manifest parser."""
    make_bundle(bdir, library=None)
    assert parse_manifest(bdir).file == (bdir / LIB).resolve()


# Without provides, the [function_count] key check cannot reject a bad version for another reason.
NO_PROVIDES: dict[str, object] = {"provides": DROP, "function_count": DROP}


# The real runtime parses versions as integers (Rust u32/str::parse: ASCII digits only, no
# trailing newline). Python's ``re`` ``\d`` matches any Unicode digit and ``$`` matches before
# a trailing "\n", so these slip through _manifest.py's regexes today.
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"version": r'"1.0\n"', **NO_PROVIDES}, id="version-trailing-newline"),
        pytest.param({"version": '"\u0661.\u0660"', **NO_PROVIDES}, id="version-arabic-indic-digits"),
        pytest.param({"version": f'"{2**32}.0"', **NO_PROVIDES}, id="version-major-above-u32"),
        pytest.param({"provides": r'["test.add@1\n"]'}, id="provides-trailing-newline"),
        pytest.param({"provides": '["test.add@\u0661"]'}, id="provides-arabic-indic-digit"),
    ],
)
def test_lenient_version_strings_rejected(bdir: Path, overrides: dict[str, object]) -> None:
    make_bundle(bdir, overrides)
    with pytest.raises(ManifestError, match="invalid version|provides entry"):
        parse_manifest(bdir)


# --------------------------------------------------------------------------- property


NAMES = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES, hex_id=st.booleans())
def test_any_printable_name_with_its_fnv_id_round_trips(name: str, hex_id: bool) -> None:
    expected = fnv1a64(name)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_bundle(
            directory,
            {"name": toml_string(name), "id": f"0x{expected:X}" if hex_id else str(expected)},
        )
        data = parse_manifest(directory)
    assert data.name == name
    assert data.id == expected
    assert data.path == directory


@settings(max_examples=100, deadline=None)
@given(name=NAMES, delta=st.integers(min_value=1, max_value=2**64 - 1))
def test_any_other_id_is_tampered(name: str, delta: int) -> None:
    wrong = (fnv1a64(name) + delta) % 2**64
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_bundle(directory, {"name": toml_string(name), "id": str(wrong)})
        error = InitFailed if wrong == 0 else ManifestError
        with pytest.raises(error) as info:
            parse_manifest(directory)
    assert info.value.bundle == name
    if wrong:
        assert "tampered" in str(info.value)
