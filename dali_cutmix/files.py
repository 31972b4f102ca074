"""Listing an ImageNet-style dataset, file lists, and the errors bad input raises.

The listing follows torchvision's ``ImageFolder`` exactly (same class order,
same file order, same extensions, subfolders of a class folder included), so
the integer labels a DALI loader yields are ``ImageFolder(root).targets`` for
the same files. A file list is DALI's ``fn.readers.file`` format: one
``path label`` pair per line, the path relative to the list's folder unless it
is absolute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import numbers
import os
import re
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dali_cutmix.config import MixConfig

__all__ = [
    "IMG_EXTENSIONS",
    "LOWER_BATCH_SIZE",
    "BadImageError",
    "DatasetError",
    "ImageList",
    "LabelBeyondClassesError",
    "MissingFilesError",
    "NOT_UTF8",
    "UNLISTABLE",
    "bad_file_problem",
    "counted",
    "empty_classes",
    "class_folders",
    "header_words",
    "list_image_folder",
    "list_images",
    "file_list_named",
    "list_root_named",
    "listable",
    "name_problem",
    "path_in_message",
    "read_file_list",
    "scan_hint",
    "what_is_wrong",
    "write_file_list",
]

logger = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS; compared case-insensitively, as there.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# What to do about files DALI cannot decode: {root} is the dataset folder, {list_flag}
# the training application's flag for the split (--train-list or --val-list), {scan} and
# {train} the commands as the user starts them (scan_commands).
SCAN_HINT = (
    "Run `{scan} {root} --out DIR` (DIR: any writable folder) to find "
    "every bad file and write a list of the good ones, then read that list: "
    '`make_loader(..., file_list="DIR/files.txt")`, or `{train} ... '
    "{list_flag} DIR/files.txt`."
)


def counted(n: int, noun: str) -> str:
    """``"1 image"``, ``"2 images"``, ``"1 class"``, ``"3 classes"``, ``"2 epochs"``: for
    messages."""
    if n == 1:
        return f"{n} {noun}"
    hissing = noun.endswith(("s", "sh", "ch", "x")) and not noun.endswith("och")  # epochs
    return f"{n} {noun}{'es' if hissing else 's'}"


def scan_commands() -> dict[str, str]:
    """The scan and the training commands, as :data:`SCAN_HINT` names them: the console
    scripts under a console script, else ``python -m`` (:func:`dali_cutmix.cli.other_command`)."""
    from dali_cutmix.cli import other_command  # that module imports this one

    return {
        "scan": other_command("scan", "dali_cutmix.scan"),
        "train": other_command("train", "train"),
    }


# The folder names of a dataset's splits, which are never its classes.
SPLIT_NAMES = frozenset({"train", "val", "validation", "test"})
_LAYOUT = "ROOT/<class>/<image>.JPEG, one subfolder per class (ImageFolder's layout)"
_WRITE_LIST = (
    "`python -m dali_cutmix.scan ROOT --out DIR` writes one for the dataset ROOT: DIR/files.txt"
)


def scan_hint(root: str | os.PathLike[str], *, train: bool = True) -> str:
    """:data:`SCAN_HINT` for the dataset folder ``root`` and the training or validation split."""
    return SCAN_HINT.format(
        root=shlex.quote(str(root)),
        list_flag="--train-list" if train else "--val-list",
        **scan_commands(),
    )


def bad_file_problem(error: Exception) -> str:
    """The part of a loader's error that says what is wrong, :data:`SCAN_HINT`'s advice cut
    off, for a command to give its own."""
    message = " ".join(str(error).split())
    cut = message.find(SCAN_HINT.split("{root}")[0].format(**scan_commands()).strip())
    return message[:cut].strip() if cut > 0 else message


def what_is_wrong(path: str | os.PathLike[str]) -> str:
    """What is wrong with ``path``, a file that did not read as an image: gone, a broken
    link, unreadable, empty, or not an image (a listed file gone or unreadable reads as a
    decoding error in DALI's message, and as one in PIL's)."""
    if not os.path.lexists(path):
        return "does not exist (it is listed, but gone)"
    if not os.path.exists(path):
        return "is a broken symbolic link"
    if not os.access(path, os.R_OK):
        return "cannot be read (permissions)"
    if os.path.getsize(path) == 0:  # a copy cut off, a download never finished
        return "is an empty file (0 bytes)"
    return "is not a decodable image"


def header_words(reason: str) -> str:
    """A file's header problem as messages give it, from PIL's error as ``"Class: message"``
    (:func:`dali_cutmix.scan.check_image`'s reason): its message (``"Truncated File
    Read"``; the class alone, ``"OSError"``, said nothing), the class where the message is
    empty, and ``"not an image format PIL knows"`` for ``UnidentifiedImageError`` (text,
    HTML, another format), whose message only repeats the path."""
    error_class, _, message = reason.partition(":")
    if error_class == "UnidentifiedImageError":
        return "not an image format PIL knows"
    return message.strip() or error_class


# A loader's advice where its files give no batch; train names its own flag instead.
LOWER_BATCH_SIZE = "lower the batch size"


class DatasetError(ValueError):
    """The dataset cannot be read as given; the message names the path and the fix."""


class BadImageError(DatasetError):
    """A file in the dataset is not a decodable image.

    Attributes:
        path: the offending file, or ``None`` when DALI did not say which one.
    """

    def __init__(self, message: str, *, path: str | None) -> None:
        super().__init__(message)
        self.path = path


class MissingFilesError(DatasetError):
    """Listed files that do not exist (``read_file_list(must_exist=True)``).

    The message ends with what to do: delete those lines or, where the missing
    paths are relative, give the folder they are relative to as the root. A
    program whose root comes from its own flag words that part with
    :meth:`advising` (``python -m train``: ``--data``).

    Attributes:
        found: what the list names that does not exist (the list, the count, the first three).
        base: the folder the list's relative paths resolved against.
        relative: some missing path was relative, so another base may find it.
        every: not one listed file exists: a dataset that moved, not lines to delete.
    """

    def __init__(self, found: str, *, base: str, relative: bool, every: bool = False) -> None:
        self.found, self.base, self.relative, self.every = found, base, relative, every
        super().__init__(self.advising("give the folder the paths are relative to as the root"))

    def advising(self, root_advice: str, new_list: str = "read that one instead") -> str:
        """The message, with ``root_advice`` as the way to another base, and ``new_list``
        as the way to a list written anew (where no listed file exists, by absolute paths:
        a scan's files.txt of a dataset that moved since, where "delete those lines"
        meant every line)."""
        if self.every and not self.relative:
            return (
                f"{self.found}; not one of them exists: if the dataset moved, write the list "
                f"anew where it is now ({_WRITE_LIST}) and {new_list}."
            )
        if not self.relative:
            return f"{self.found}; delete those lines."
        return (
            f"{self.found}; delete those lines, or {root_advice} (they resolve against "
            f"{self.base!r})."
        )


class LabelBeyondClassesError(DatasetError):
    """A file list's label beyond the root's class folders (``read_file_list(root=...)``).

    The list was written for another dataset folder. A program whose root comes from
    its own flag words the fix with :meth:`advising` (``python -m train``: ``--data``).

    Attributes:
        found: the list, the line, the label and the root's class count.
    """

    def __init__(self, found: str) -> None:
        self.found = found
        super().__init__(
            self.advising(
                "give the dataset folder the list was written for as the root, or no root "
                "(its class names then come from the files' folders)"
            )
        )

    def advising(self, root_advice: str) -> str:
        """The message, with ``root_advice`` as the way to the right root."""
        return f"{self.found}; {root_advice}."


@dataclasses.dataclass(frozen=True)
class ImageList:
    """The files a loader reads, with their labels and the class names.

    Attributes:
        classes: class names; label ``i`` means ``classes[i]``.
        paths: absolute file paths, in ``ImageFolder`` order for a folder.
        labels: int label of each path, same length as ``paths``.
        source: the folder or file list this came from (for messages).
        left_out: the files of a folder's listing that ``ImageFolder`` leaves out too (no
            image extension, or beside the class folders), which its log line names; a
            scan's report counts them, so that its counts add up to the files on disk.
    """

    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    source: str
    left_out: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(
                f"paths and labels differ in length: {len(self.paths)} != {len(self.labels)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def check_names(self, *, train: bool = True) -> None:
        """A :class:`BadImageError` naming the first file whose name DALI's reader cannot
        take (:func:`name_problem`: bytes that are not UTF-8), with the scan that lists
        every such file and writes a list of the others; ``train``: the split, for the
        advice (``--train-list`` or ``--val-list``)."""
        try:
            "\n".join(self.paths).encode("utf-8")  # at once for a million names
            return
        except UnicodeEncodeError:
            bad = [p for p in self.paths if name_problem(p) == NOT_UTF8]
        more = f" ({counted(len(bad), 'file')} of {self.source!r} have such names)"
        raise BadImageError(
            f"{bad[0]!r}: {NOT_UTF8}{more if len(bad) > 1 else ''}. "
            + scan_hint(self.source, train=train),
            path=bad[0],
        )

    def check_mix(self, mix: MixConfig | None) -> None:
        """A ValueError unless ``mix`` (if any) makes targets of this dataset's classes."""
        if mix is not None and mix.num_classes != self.num_classes:
            raise ValueError(
                f"mix.num_classes is {mix.num_classes} but {self.source!r} has "
                f"{counted(self.num_classes, 'class')}"
            )


def _has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_file(entry: os.DirEntry[str]) -> str | None:
    """What ``entry`` is when it is no regular file (``None`` for one, or for a link to one
    or to nothing: a dangling link is left to the readers, which name it). A regular file
    costs no system call (the folder's listing says what it is)."""
    try:
        if entry.is_file(follow_symlinks=False):
            return None
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError:
        return None
    return next((what for test, what in _SPECIAL_FILES if test(mode)), None)


def _class_files(class_dir: str, skipped: list[str] | None = None) -> list[str]:
    """Image files under one class folder, in ``ImageFolder``'s order; the other files
    (no image extension) are appended to ``skipped``.

    The walk is ``os.walk(class_dir, followlinks=True)``'s, as ``ImageFolder``
    lists. Where that would list wrongly without a word, this refuses by name
    (``DatasetError``): a folder it cannot read (its images were left out, or the class
    said to hold none), a link to a folder above it (each image listed some 40 times
    over, as deep as paths go), and a FIFO, socket or device with an image's name (a
    reader opening a FIFO waited for ever, deaf to Ctrl-C).
    """
    found: list[tuple[str, list[str]]] = []

    def walk(folder: str, chain: tuple[str, ...]) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as error:
            raise DatasetError(
                f"{folder!r} cannot be read ({error.strerror}): its images would be left "
                "out; make it readable, or move it out of the dataset."
            ) from None
        files, folders = [], []
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # through links, as os.walk(followlinks=True)
            except OSError:
                is_folder = False
            (folders if is_folder else files).append(entry)
        names = []
        for entry in sorted(files, key=lambda e: e.name):
            if not _has_image_extension(entry.name):
                if skipped is not None:
                    skipped.append(entry.path)
                continue
            what = _special_file(entry)
            if what is not None:
                raise DatasetError(
                    f"{entry.path!r} is {what}, not a file: a reader would wait on it for "
                    "ever; remove it, or move it out of the dataset."
                )
            names.append(entry.path)
        found.append((folder, names))
        for entry in folders:
            real = os.path.realpath(entry.path)
            if real in chain:
                raise DatasetError(
                    f"{entry.path!r} links to a folder it is in ({real!r}), a loop: its "
                    "images would be listed over and over; remove the link."
                )
            walk(entry.path, (*chain, real))

    walk(class_dir, (os.path.realpath(class_dir),))
    return [path for _, names in sorted(found) for path in names]


def _check_root(root: Path) -> None:
    hint = f"Give a folder laid out as {_LAYOUT}."
    if not root.exists():
        raise DatasetError(f"dataset root {str(root)!r} does not exist. {hint}")
    if not root.is_dir():
        raise DatasetError(f"dataset root {str(root)!r} is not a folder. {hint}")


def _and_join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def class_folders(root: str | os.PathLike[str]) -> list[str]:
    """The class folder names under ``root``, sorted as ``ImageFolder`` sorts them.

    Raises:
        DatasetError: ``root`` is missing or not a folder, has no subfolder, or
            has only split folders (``train/``, ``val/``...): one level too high.
    """
    root = Path(root)
    _check_root(root)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(
            f"dataset root {str(root)!r} has no class folders; give a folder laid out as "
            f"{_LAYOUT}, with images of extensions {', '.join(IMG_EXTENSIONS)}."
        )
    if set(classes) <= SPLIT_NAMES:
        first, *others = [
            str(root / n) for n in ("train", "val", "validation", "test") if n in classes
        ]
        use = f"{first!r} (or {others[0]!r})" if others else repr(first)
        raise DatasetError(
            f"{str(root)!r} has only the subfolder{'s' * (len(classes) > 1)} "
            f"{_and_join([f'{name}/' for name in classes])}: it looks like a dataset root, not a "
            f"folder of classes; give {use}, whose subfolders are the classes."
        )
    return classes


def list_image_folder(root: str | os.PathLike[str]) -> ImageList:
    """Lists ``root/<class>/**/<image>`` exactly as ``torchvision.datasets.ImageFolder`` does.

    Args:
        root: the dataset folder, one subfolder per class.

    Returns:
        An :class:`ImageList` with absolute paths; ``labels`` equal
        ``ImageFolder(root).targets`` and ``classes`` equal ``ImageFolder(root).classes``.

    Raises:
        DatasetError: ``root`` is missing, not a folder, has no class folders,
            has only ``train/`` and ``val/`` (a dataset root: the message names
            the split folder to give instead), or a class folder holds no image;
            the message names the path and what to do.
    """
    root = Path(root).expanduser().resolve()
    classes = class_folders(root)
    _warn_of_hidden_classes(root, classes)
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, name in enumerate(classes):
        files = _class_files(str(root / name), skipped)
        if not files:
            raise DatasetError(
                f"class folder {str(root / name)!r} holds no image (extensions "
                f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder (with the "
                "class's folder in any other split: train/ and val/ must have the same "
                "classes), since class indices follow the sorted folder names."
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    logger.info(
        "listed %s in %s under %s",
        counted(len(paths), "image"),
        counted(len(classes), "class"),
        root,
    )
    left_out = _tell_of_unlisted_files(root, skipped)
    return ImageList(tuple(classes), tuple(paths), tuple(labels), str(root), left_out)


def _warn_of_hidden_classes(root: Path, classes: Sequence[str]) -> None:
    """A class folder whose name starts with a dot (``.cache``, ``.ipynb_checkpoints``) is
    a class to ``ImageFolder`` too, sorted first: every real label moves up by one."""
    hidden = [name for name in classes if name.startswith(".")]
    if hidden:
        one = len(hidden) == 1
        logger.warning(
            "%s %s under %s %s hidden (a name starting with a dot) and %s a class here, as "
            "in ImageFolder, sorted before the others (label %d): move %s out of the dataset "
            "if %s not a class",
            "class folder" if one else "class folders",
            ", ".join(repr(name) for name in hidden),
            root,
            "is" if one else "are",
            "is" if one else "each",
            classes.index(hidden[0]),
            "it" if one else "them",
            "it is" if one else "they are",
        )


def _tell_of_unlisted_files(root: Path, skipped: Sequence[str]) -> tuple[str, ...]:
    """Logs the files a listing left out, as ``ImageFolder`` leaves them out: those in class
    folders without an image extension (``.gif``, ``.heic``, ``.part``) and those beside the
    class folders, in none; returns them."""
    try:
        loose = sorted(entry.path for entry in os.scandir(root) if entry.is_file())
    except OSError:
        loose = []
    for files, where in (
        (skipped, "without an image extension"),
        (loose, f"directly in {root}, outside every class folder"),
    ):
        if files:
            shown = ", ".join(repr(os.path.relpath(f, root)) for f in files[:3])
            logger.info(
                "left out %s %s, as ImageFolder does: %s%s",
                counted(len(files), "file"),
                where,
                shown,
                f" and {len(files) - 3} more" if len(files) > 3 else "",
            )
    return (*skipped, *loose)


# "path label": the label after the last run of spaces or tabs. ASCII digits only:
# str.isdigit() also takes "²" (int() fails on it) and "٣" (int() reads 3).
_LINE = re.compile(r"(?P<path>.*?)[ \t]+(?P<label>[0-9]+)")

# DALI's labels are int32.
MAX_LABEL = 2**31 - 1

# A list read without a root names max(label) + 1 classes: a label beyond this is taken
# for a mistake (a wrong column, a typo) rather than a million class names made.
MAX_LABEL_WITHOUT_ROOT = 2**20 - 1


def _parse_line(line: str, *, number: int, list_path: Path) -> tuple[str, int]:
    match = _LINE.fullmatch(line.rstrip())
    if match is None or not match["path"].strip():
        raise DatasetError(
            f"{str(list_path)!r} line {number}: expected 'path label' with an integer "
            f"label >= 0, got {line.rstrip()!r}; correct or delete that line ({_WRITE_LIST})."
        )
    label = int(match["label"])
    if label > MAX_LABEL:
        raise DatasetError(
            f"{str(list_path)!r} line {number}: label {label} is beyond DALI's int32 labels "
            f"(at most {MAX_LABEL}); correct or delete that line."
        )
    return match["path"].strip(), label


def _check_entries(
    paths: Sequence[str], labels: Sequence[int], numbers: Sequence[int], list_path: Path
) -> None:
    """A file listed with two labels is refused; one listed twice with its label is logged
    (it is read twice an epoch, which may be meant: oversampling). Paths are compared as
    spelled once ``.``, ``..`` and doubled slashes are taken out (``./a.JPEG`` is
    ``a.JPEG``); not through symbolic links, which would take a call per file."""
    first: dict[str, tuple[int, int, str]] = {}
    repeated = []
    for path, label, number in zip(paths, labels, numbers):
        seen = first.setdefault(os.path.normpath(path), (number, label, path))
        if seen[0] == number:
            continue
        if seen[1] != label:
            spelled = f", as {path!r}" if path != seen[2] else ""
            raise DatasetError(
                f"{str(list_path)!r} lists {seen[2]!r} with label {seen[1]} (line {seen[0]}) "
                f"and label {label} (line {number}{spelled}); delete the wrong line."
            )
        repeated.append(number)
    if repeated:
        logger.warning(
            "%s lists %d file%s more than once (first at line %d): each is read once per "
            "listing an epoch",
            list_path,
            len(repeated),
            "s" * (len(repeated) != 1),
            repeated[0],
        )


def _missing(paths: Sequence[str]) -> list[int]:
    """The indices of the paths that are no file.

    One after another where the first few answer fast (a local disk: about 3 us each on
    the 2-core machine, where 16 threads took 2.5 times as long); on 16 threads where
    they do not (a network file system, whose every stat waits on a round trip).
    """
    probe = min(len(paths), 256)
    start = time.perf_counter()
    missing = [i for i in range(probe) if not os.path.isfile(paths[i])]
    rest = range(probe, len(paths))
    if (time.perf_counter() - start) / max(probe, 1) < 50e-6:
        return missing + [i for i in rest if not os.path.isfile(paths[i])]
    from concurrent.futures import ThreadPoolExecutor

    step = max(1, -(-len(rest) // 64))
    chunks = [rest[i : i + step] for i in range(0, len(rest), step)]
    with ThreadPoolExecutor(16) as pool:
        found = pool.map(lambda chunk: [i for i in chunk if not os.path.isfile(paths[i])], chunks)
        return missing + [i for part in found for i in part]


@contextlib.contextmanager
def list_root_named(flag: str) -> Iterator[None]:
    """Within the block, :func:`read_file_list`'s errors about the root name the command's
    own ``flag`` for it (``--data``): the library's words ("give ... as the root, or no
    root") advised what ``preview --file-list`` refuses (a list without ``--data``).

    Raises:
        DatasetError: for a :class:`MissingFilesError` or :class:`LabelBeyondClassesError`.
    """
    try:
        yield
    except MissingFilesError as error:
        advice = f"give as {flag} the folder the paths are relative to"
        raise DatasetError(error.advising(advice)) from None
    except LabelBeyondClassesError as error:
        advice = f"give as {flag} the dataset folder the list was written for"
        raise DatasetError(error.advising(advice)) from None


# How read_file_list's messages name the list: a command names it by its flag instead.
_LIST_WORDS = "file list "


@contextlib.contextmanager
def file_list_named(flag: str) -> Iterator[None]:
    """Within the block, a file list's errors name the list by the command's ``flag``
    (``--train-list '/x.txt' lists no files``: "file list '/x.txt'" named no flag, so a
    command of several lists left the user to guess). Put it outside
    :func:`list_root_named` and a command's own rewording of the list's errors."""
    try:
        yield
    except DatasetError as error:
        message = str(error)
        if isinstance(error, BadImageError) or not message.startswith(_LIST_WORDS):
            raise
        raise DatasetError(f"{flag} {message.removeprefix(_LIST_WORDS)}") from None


def read_file_list(
    file_list: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    must_exist: bool = False,
) -> ImageList:
    """Reads a DALI file list (``path label`` per line, a space or a tab between).

    Relative paths are resolved against ``root`` when given, else against the
    list's folder (as ``fn.readers.file`` does). Class names come from
    ``root``'s class folders when given; otherwise label ``i`` is named after
    the folder holding its first file, and there are ``max(label) + 1`` classes
    (a folder whose files carry several labels is logged as a warning: in an
    ImageFolder layout it is a wrong label); with ``root``, files in its class folders
    whose label is not their folder's are logged as a warning. A file listed twice with
    one label is kept twice (logged); with two labels, refused.

    Args:
        must_exist: every listed file must exist (the loaders' check, before any
            image is read).

    Raises:
        DatasetError: the list is missing, empty or malformed, a label is beyond
            int32 (or beyond 2**20 - 1 without ``root``), a file is listed with two
            labels, a listed file does not exist (``must_exist``), or ``root`` is
            unusable (see :func:`list_image_folder`); the message names the file,
            line or folder and what to do.
    """
    list_path = Path(file_list).expanduser().resolve()
    if not list_path.is_file():
        raise DatasetError(
            f"file list {str(list_path)!r} does not exist or is not a file; give a file of "
            f"'path label' lines ({_WRITE_LIST})."
        )
    base = Path(root).expanduser().resolve() if root is not None else list_path.parent
    # UTF-8 whatever the locale (write_file_list's encoding), a BOM (Windows editors)
    # dropped, and a name's bytes that are not UTF-8 kept as os.fsdecode keeps them
    raw = list_path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4096]:  # Notepad's "Unicode"
        raise DatasetError(
            f"file list {str(list_path)!r} is UTF-16 (or holds NUL bytes), not text of "
            "UTF-8 lines; save it as UTF-8"
        )
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    # lines end as write_file_list ends them, or as Windows and old Mac editors do; not at
    # every character str.splitlines() takes for one (\x1c, \x85, \u2028, ...), which a
    # name may hold
    lines = re.split(r"\r\n|\r|\n", text) if "\r" in text else text.split("\n")  # 4x faster
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    entries = [_parse_line(line, number=n, list_path=list_path) for n, line in numbered]
    numbers = [n for n, _ in numbered]  # each entry's line in the file
    if not entries:
        raise DatasetError(
            f"file list {str(list_path)!r} lists no files; give a file of 'path label' lines "
            f"({_WRITE_LIST})."
        )
    paths = tuple(os.path.join(base, p) for p, _ in entries)
    labels = tuple(label for _, label in entries)
    _check_entries(paths, labels, numbers, list_path)
    if must_exist:
        missing = _missing(paths)
        if missing:
            shown = ", ".join(f"{paths[i]!r} (line {numbers[i]})" for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise MissingFilesError(
                f"file list {str(list_path)!r} names {len(missing)} file"
                f"{'s' * (len(missing) != 1)} that {'does' if len(missing) == 1 else 'do'} "
                f"not exist: {shown}{more}",
                base=str(base),
                relative=any(not os.path.isabs(entries[i][0]) for i in missing),
                every=len(missing) == len(paths),
            )
    if root is None and max(labels) > MAX_LABEL_WITHOUT_ROOT:
        line = numbers[labels.index(max(labels))]
        raise DatasetError(
            f"{str(list_path)!r} line {line}: label {max(labels)} would make "
            f"{max(labels) + 1} classes of a list read without a root; correct that line, "
            f"or give the dataset folder (its class folders name the classes) as the root."
        )
    if root is not None:
        classes = tuple(class_folders(base))
        _warn_of_hidden_classes(base, classes)
        if max(labels) >= len(classes):
            line = numbers[labels.index(max(labels))]
            raise LabelBeyondClassesError(
                f"file list {str(list_path)!r} line {line} has label {max(labels)} but "
                f"{str(base)!r} has only {counted(len(classes), 'class folder')} (labels 0 to "
                f"{len(classes) - 1})"
            )
        _warn_of_other_labels(entries, numbers, base, classes, list_path)
    else:
        classes = _names_from_paths(paths, labels, numbers)
    count, unlisted = empty_classes(classes, labels)
    if count:  # a scan that found every image of a class bad, a list cut short
        logger.warning(
            "file list %r has no file of %s: %s; %s the model's outputs but in none of "
            "the list's images",
            str(list_path),
            counted(count, "class"),
            unlisted,
            "it is among" if count == 1 else "they are among",
        )
    return ImageList(classes, paths, labels, str(list_path))


def empty_classes(
    classes: Sequence[str], labels: Iterable[int], *, shown: int = 5
) -> tuple[int, str]:
    """How many classes no label names, and the first ``shown`` of them as
    ``"0 'ant', 3 'eel'"`` (then ``" and N more"``); ``(0, "")`` where each has one."""
    missing = sorted(set(range(len(classes))) - set(labels))
    said = ", ".join(f"{i} {classes[i]!r}" for i in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return len(missing), said + more


def _warn_of_other_labels(
    entries: Sequence[tuple[str, int]],
    numbers: Sequence[int],
    base: Path,
    classes: Sequence[str],
    list_path: Path,
) -> None:
    """Logs a warning where listed files inside ``base``'s class folders carry a label
    other than their folder's: a list written for another folder (labels shifted by one
    trained silently to 0 % validation accuracy). Files elsewhere are not judged."""
    index = {name: label for label, name in enumerate(classes)}
    prefix = str(base) + os.sep
    other: list[tuple[int, str, int, str]] = []  # line, path, label, folder
    for (path, label), number in zip(entries, numbers):
        if os.path.isabs(path):
            if not path.startswith(prefix):
                continue
            path = path[len(prefix) :]
        folder = path.split(os.sep, 1)[0]
        if folder in (".", ".."):  # ./n01440764/x.JPEG
            folder = os.path.normpath(path).split(os.sep, 1)[0]
        if index.get(folder, label) != label:
            other.append((number, path, label, folder))
    if other:
        number, path, label, folder = other[0]
        logger.warning(
            "%s of file list %r %s a label other than %s class folder's in %r, e.g. line "
            "%d: %r has label %d, and %r is label %d; check that the list was written for "
            "this folder",
            counted(len(other), "file"),
            str(list_path),
            "carries" if len(other) == 1 else "carry",
            "its" if len(other) == 1 else "their",
            str(base),
            number,
            path,
            label,
            folder,
            index[folder],
        )


def list_images(
    root: str | os.PathLike[str] | None, file_list: str | os.PathLike[str] | None = None
) -> ImageList:
    """The files a loader reads: ``file_list``'s (relative paths under ``root``; every one
    must exist), else ``root`` listed as ``ImageFolder`` lists it."""
    if file_list is not None:
        return read_file_list(file_list, root=root, must_exist=True)
    if root is None:
        raise ValueError("give the dataset root, a file_list, or both")
    return list_image_folder(root)


def _names_from_paths(
    paths: Sequence[str], labels: Sequence[int], numbers: Sequence[int]
) -> tuple[str, ...]:
    names: dict[int, str] = {}
    by_folder: dict[str, dict[int, int]] = {}  # folder -> label -> its first line
    for path, label, number in zip(paths, labels, numbers):
        folder = os.path.dirname(path)
        names.setdefault(label, os.path.basename(folder))
        by_folder.setdefault(folder, {}).setdefault(label, number)
    mixed = {folder: found for folder, found in by_folder.items() if len(found) > 1}
    if mixed and len(by_folder) > 1:  # not a flat list (one folder, labels by line)
        folder, found = next(iter(mixed.items()))
        logger.warning(
            "%d folder%s of the list hold%s files of several labels, e.g. %r: labels %s; in "
            "an ImageFolder layout that is a wrong label (class names here come from folders)",
            len(mixed),
            "s" * (len(mixed) != 1),
            "s" * (len(mixed) == 1),
            folder,
            ", ".join(f"{label} (line {line})" for label, line in list(found.items())[:4]),
        )
    return tuple(names.get(i, f"class_{i}") for i in range(max(labels) + 1))


UNLISTABLE = (
    "its name has leading/trailing whitespace or a newline, which DALI's file list "
    "cannot hold; rename the file"
)


NOT_UTF8 = (
    "its name is not valid UTF-8, which DALI's reader cannot take; rename the file "
    "(convmv renames a tree of files)"
)


def listable(file_path: str) -> bool:
    """Whether a ``path label`` line of DALI's file list can hold ``file_path``."""
    return file_path == file_path.strip() and "\n" not in file_path and "\r" not in file_path


def name_problem(file_path: str) -> str | None:
    """Why DALI cannot read ``file_path`` by its name (:data:`NOT_UTF8`: its bytes are not
    UTF-8, kept as ``os.fsdecode`` keeps them) or a file list cannot hold it
    (:data:`UNLISTABLE`); ``None`` where neither."""
    try:
        file_path.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UTF8
    return None if listable(file_path) else UNLISTABLE


# What a path to write names when it is no file: os.replace would put a file in its place.
NOT_A_FILE = "not a regular file (a folder, a FIFO, a device or a socket)"


def write_whole(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """``write(partial)`` on a file beside ``path`` (``.NAME.partial.SUFFIX``, the suffix
    kept for writers that read the format from it), then renamed to ``path``; returns
    ``path``. Where ``path`` is a link, its target is written and the link kept.

    A write that fails (a full disk, a quota) leaves neither an empty nor a half-written
    ``path``, and an earlier file there whole; the partial file is removed.

    Raises:
        OSError: the write's, naming ``path`` (not the partial file), for
            :func:`dali_cutmix.cli.exit_on_user_error` to end the command in one line: a
            full disk's error named no file, and ended in a traceback; ``EINVAL`` where
            ``path`` names something other than a file (:data:`NOT_A_FILE`).
    """
    path = Path(path)
    # A link is written through (the rename replaced the link by a file, and left its target
    # as it was); anything but a file there (a FIFO, a device) is refused, not replaced.
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise OSError(errno.EINVAL, f"{NOT_A_FILE}; give a file", str(path))
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    try:
        write(partial)
        os.replace(partial, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    return path


def write_file_list(path: str | os.PathLike[str], entries: Iterable[tuple[str, int]]) -> int:
    """Writes ``path label`` lines (DALI's file-list format); returns the line count.

    Every entry is checked before anything is written, and the file is replaced
    whole (written beside it, then renamed), so an earlier list is never left
    half-overwritten.

    Raises:
        DatasetError: a path that such a line cannot hold, or a label that is no int
            from 0 to :data:`MAX_LABEL` (named): :func:`read_file_list` would refuse it.
    """
    entries = list(entries)
    for file_path, label in entries:
        if not listable(file_path):
            raise DatasetError(f"{file_path!r}: {UNLISTABLE}.")
        if (
            isinstance(label, bool)
            or not isinstance(label, numbers.Integral)
            or not 0 <= label <= MAX_LABEL
        ):
            raise DatasetError(
                f"{file_path!r}: label {label!r} is no int from 0 to {MAX_LABEL}, which a file "
                "list's line holds."
            )
    lines = "".join(f"{p} {label}\n" for p, label in entries)
    write_whole(
        path, lambda part: part.write_text(lines, encoding="utf-8", errors="surrogateescape")
    )
    return len(entries)


# DALI names the file in e.g. "Failed to decode sample #3 : /data/x.JPEG" or
# "File mapping failed: /data/x.JPEG"; the path runs to the end of the line.
_PATH_PATTERNS = (
    re.compile(r"Failed to decode sample[^:\n]*:\s*(?P<path>[^\n]+?)\s*$", re.MULTILINE),
    re.compile(
        r"(?:File mapping failed|Failed to open file):?\s*(?P<path>[^\n]+?)\s*$", re.MULTILINE
    ),
)


def path_in_message(message: str, *, known: Iterable[str] = ()) -> str | None:
    """The file a DALI error message names, if any (checked against ``known`` when given)."""
    for pattern in _PATH_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group("path")
    return next((p for p in known if p in message), None)
