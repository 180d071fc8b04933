"""Where a metadata field's value comes from, in each file format.

Every :class:`~metamri.metadata.schema.FieldSpec` maps format names to one source
(``FieldSpec.sources``): ``"fastmri"`` (fastMRI brain ``.h5`` with its ISMRMRD header),
``"cmrxrecon"`` (CMRxRecon cine ``.mat`` with the sidecar table ``cine_info.csv``) and
``"contextmri"`` (ContextMRI's metadata tables).  A format a field does not name stores
nothing for it (:class:`NotStored`).  The readers do not know any field: they show one
file to the schema through a :class:`FileView`, and
:func:`metamri.metadata.extract.read_values` runs every field's source on it.

==========================  =====================================================================
source                      value
==========================  =====================================================================
:class:`Constant`           the same for every file of the format (anatomy ``"brain"``)
:class:`HeaderPath`         an ISMRMRD header element, ``sequenceParameters/TR``: a list gives
                            its first entry; ``scale`` converts the header's units
:class:`FileAttribute`      an HDF5 root attribute (text), fastMRI's ``acquisition``
:class:`Column`             a column of the format's table (text); ``separator`` splits a
                            multi-label cell; ``scale`` converts the table's units
:class:`FileName`           a rule of the file's name (``cine_sax`` -> ``SAX``)
:class:`FromField`          a rule of another field's value (fastMRI's view from the contrast)
:class:`ItemPosition`       the item's index along the file's slice axis, set per item
:class:`NotStored`          nothing: the format does not store the field
==========================  =====================================================================

Options every source takes (keyword-only):

* ``when``: a rule (``(view, values) -> bool``, values of the fields read before);
  the value is read only when it holds, and is otherwise *not applicable*: ``None``
  without a warning (fastMRI's TI on a non-inversion-recovery scan, a placeholder).
* ``expected``: whether a file of the format should give a value (``True``, ``False`` or
  a rule).  A value that is expected, absent and read by the encoder is reported
  (:mod:`metamri.metadata.missing`); the cine table's TI is expected on
  inversion-recovery scans only, its pathology never (no label is a normal state).
* ``scale``: factor from the file's units to the schema's (``0.1``: mm in the file, cm
  in the schema); numbers only.
* ``convert``: a function of the value read (before the checks): ContextMRI's contrast
  name ``FLAIR`` -> fastMRI's label ``AXFLAIR``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, ClassVar

#: ``(view, values) -> bool``: a test on one file and the values of its fields read so far.
Rule = Callable[["FileView", Mapping[str, Any]], bool]

#: The file formats the schema describes, as keys of ``FieldSpec.sources``.
FORMATS: tuple[str, ...] = ("fastmri", "cmrxrecon", "contextmri")


@dataclass(frozen=True)
class FileView:
    """What a reader shows the schema's sources of one file (or one table row).

    Attributes:
        path: The file, named in errors and warnings.
        header: The parsed ISMRMRD header (an ``ismrmrd.xsd.ismrmrdHeader``), ``None`` when
            the file has none.
        attrs: The file's root attributes, as text.
        row: One row of the format's table, column -> cell text; ``None`` when there is no
            table or no row for this file.
        table: The table the row comes from (named, with ``line``, in errors about its cells).
        line: The row's line in ``table`` (1 is the column names).
        name: The file's name without its extension (:class:`FileName` rules read it).
        protocol: Free-text protocol name (fastMRI: ``measurementInformation/protocolName``),
            read by rules such as :func:`~metamri.metadata.rules.inversion_recovery_scan`.
        notes: Why a part of the file is absent, keyed by ``Source.part`` (``"header"``,
            ``"row"``): said in the warnings about the fields it would have given.
    """

    path: str | PathLike[str] | None
    header: Any = None
    attrs: Mapping[str, str | None] = field(default_factory=dict)
    row: Mapping[str, str | None] | None = None
    table: str | PathLike[str] | None = None
    line: int | None = None
    name: str = ""
    protocol: str | None = None
    notes: Mapping[str, str] = field(default_factory=dict)

    def header_value(self, path: str) -> Any:
        """The header element at ``path`` (``"sequenceParameters/TR"``), ``None`` where absent.

        A list on the way (``encoding``) or at the end (``TR``) gives its first entry;
        an enumeration gives its value.

        Raises:
            ValueError: ``path`` names an element the ISMRMRD schema does not have (a
                mistake in :mod:`metamri.metadata.schema`, not in the file).
        """
        node = self.header
        for part in path.split("/"):
            node = _first(node)
            if node is None:
                return None
            if not hasattr(node, part):
                raise ValueError(
                    f"ISMRMRD header path {path!r}: {type(node).__name__} has no element {part!r} "
                    "(fix the HeaderPath in metamri/metadata/schema.py)"
                )
            node = getattr(node, part)
        node = _first(node)
        return node.value if isinstance(node, enum.Enum) else node


def _first(node: Any) -> Any:
    if isinstance(node, list | tuple):
        return node[0] if node else None
    return node


def _rule_text(rule: Rule | bool) -> str:
    doc = getattr(rule, "__doc__", None) or getattr(rule, "__name__", str(rule))
    return doc.strip().splitlines()[0].rstrip(".")


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where one field's value is in one file format (see the module docstring).

    Attributes:
        when: Read the value only when this rule holds; otherwise it is not applicable.
        expected: A file of the format should give a value (bool or rule).
        scale: Factor from the file's units to the schema's (numbers only).
        convert: Function applied to the value read, before the checks.
    """

    when: Rule | None = None
    expected: bool | Rule = True
    scale: float | None = None
    convert: Callable[[Any], Any] | None = None

    #: The part of the file the value is in (``FileView.notes`` says why a part is absent).
    part: ClassVar[str | None] = None
    #: The value is text, parsed for the field's kind (numbers from ``"3.6"``).
    text: ClassVar[bool] = False
    #: The source gives a value per file (not: per item, or never).
    stored: ClassVar[bool] = True

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        """The value as the file stores it (``None``: absent), before parsing and checks."""
        raise NotImplementedError

    @property
    def location(self) -> str | None:
        """Where the value is, as errors name it (``ismrmrd_header/sequenceParameters/TR``)."""
        return None

    @property
    def dependent(self) -> bool:
        """Reads other fields' values (so is read after the sources that do not)."""
        return self.when is not None or callable(self.expected)

    def is_expected(self, view: FileView, values: Mapping[str, Any]) -> bool:
        """Whether this file should give a value (``expected``, evaluated on the file)."""
        if not self.stored:
            return False
        return bool(self.expected(view, values)) if callable(self.expected) else bool(self.expected)

    def describe(self) -> str:
        """One line for the documentation (``metamri.inspect``, the README)."""
        text = self._what()
        if self.scale is not None:
            text += f" x {self.scale:g}"
        if self.when is not None:
            text += f" (only when: {_rule_text(self.when)})"
        if callable(self.expected):
            text += f" (expected when: {_rule_text(self.expected)})"
        elif not self.expected and self.stored:
            text += " (optional)"
        return text

    def _what(self) -> str:
        return self.location or type(self).__name__


@dataclass(frozen=True)
class Constant(Source):
    """The same value for every file of the format."""

    value: Any

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return self.value

    def _what(self) -> str:
        return f"constant {self.value!r}"


@dataclass(frozen=True)
class HeaderPath(Source):
    """An element of the ISMRMRD XML header (``ismrmrd_header`` dataset), by its path."""

    path: str
    part: ClassVar[str | None] = "header"

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return view.header_value(self.path)

    @property
    def location(self) -> str:
        return f"ismrmrd_header/{self.path}"


@dataclass(frozen=True)
class FileAttribute(Source):
    """A root attribute of the HDF5 file, as text."""

    name: str
    part: ClassVar[str | None] = "attrs"
    text: ClassVar[bool] = True

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return view.attrs.get(self.name)

    @property
    def location(self) -> str:
        return f"attrs/{self.name}"


@dataclass(frozen=True)
class Column(Source):
    """A column of the format's table; an empty cell is absent.

    Attributes:
        column: The column's name.
        table: The table, for the documentation (``"cine_info.csv"``).
        separator: Splits a multi-label cell (``";"``).
        sort_labels: Sort and de-duplicate the labels (the cine table lists a set).
    """

    column: str
    table: str = "table"
    separator: str | None = None
    sort_labels: bool = False
    part: ClassVar[str | None] = "row"
    text: ClassVar[bool] = True

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        if view.row is None:
            return None
        cell = (view.row.get(self.column) or "").strip()
        if not cell:
            return None
        if self.separator is None:
            return cell
        labels = [v.strip() for v in cell.split(self.separator) if v.strip()]
        return sorted(set(labels)) if self.sort_labels else labels

    @property
    def location(self) -> str:
        return self.column

    def _what(self) -> str:
        split = f" ({self.separator!r}-separated)" if self.separator else ""
        return f"{self.table}: {self.column}{split}"


@dataclass(frozen=True)
class FileName(Source):
    """A rule of the file's name without its extension."""

    rule: Callable[[str], Any]

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return self.rule(view.name) if view.name else None

    @property
    def location(self) -> str:
        return "file name"

    def _what(self) -> str:
        return f"file name: {_rule_text(self.rule)}"


@dataclass(frozen=True)
class FromField(Source):
    """A rule of another field's value (that field is read first)."""

    name: str
    rule: Callable[[Any], Any]

    @property
    def dependent(self) -> bool:
        return True

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        value = values.get(self.name)
        return None if value is None else self.rule(value)

    @property
    def location(self) -> str:
        return f"from {self.name}"

    def _what(self) -> str:
        return f"from {self.name}: {_rule_text(self.rule)}"


@dataclass(frozen=True)
class ItemPosition(Source):
    """The item's index along the file's slice axis: set per item by the reader, ``None`` in
    a volume's metadata."""

    stored: ClassVar[bool] = False

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return None

    def _what(self) -> str:
        return "position along the file's slice axis"


@dataclass(frozen=True)
class NotStored(Source):
    """The format does not store the field."""

    note: str = ""
    stored: ClassVar[bool] = False

    def read(self, view: FileView, values: Mapping[str, Any]) -> Any:
        return None

    def _what(self) -> str:
        return "not stored" + (f" ({self.note})" if self.note else "")
