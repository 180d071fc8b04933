"""The ISMRMRD XML header of fastMRI files: the fields metamri reads, written and parsed.

fastMRI stores the scanner's ISMRMRD header as an XML string (dataset
``ismrmrd_header``).  :class:`HeaderInfo` holds the subset metamri uses;
:func:`build_header` writes it with the ``ismrmrd.xsd`` objects (so the result is
valid against the ISMRMRD schema and ``fastmri.data.SliceDataset`` can read it) and
:func:`parse_header` reads it back with ``ismrmrd.xsd.CreateFromDocument``.

Values are the raw file values, in the header's units: TR, TE, TI and echo
spacing in ms, flip angle in degrees, field strength in tesla.  TI is *not*
filtered here: fastMRI stores a placeholder TI on every scan; the schema's rule
(:func:`metamri.metadata.rules.inversion_recovery_scan`) decides whether it means anything.

:class:`HeaderInfo` describes the header (recon size, vendor, encoding limits); the
*metadata* a reader gives comes from the parsed document (:func:`parse_document`)
through the header paths of :data:`metamri.metadata.schema.SCHEMA`, so a field
added to the schema needs nothing here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from os import PathLike
from typing import Any

import ismrmrd.xsd as xsd

from metamri.errors import DataFileError

#: Proton gyromagnetic ratio / 2 pi, Hz per tesla (fills ``H1resonanceFrequency_Hz``).
GAMMA_H1_HZ_PER_T = 42.577478518e6

_FIELD = "ismrmrd_header"


@dataclass(frozen=True)
class HeaderInfo:
    """The header fields metamri reads; ``None`` where the header lacks them.

    Attributes:
        tr: Repetition time, ms (``sequenceParameters/TR``, first value).
        te: Echo time, ms (``sequenceParameters/TE``).
        ti: Inversion time, ms (``sequenceParameters/TI``); raw, possibly a placeholder.
        flip_angle: Flip angle, degrees (``sequenceParameters/flipAngle_deg``).
        sequence_type: ``sequenceParameters/sequence_type`` (``"TurboSpinEcho"``, ``"Flash"``).
        echo_spacing: ms (``sequenceParameters/echo_spacing``).
        field_strength: B0, tesla (``acquisitionSystemInformation/systemFieldStrength_T``).
        vendor: ``systemVendor``.
        model: ``systemModel``.
        receiver_channels: ``receiverChannels``.
        protocol_name: ``measurementInformation/protocolName``.
        encoded_matrix: ``encoding/encodedSpace/matrixSize`` (x, y, z): x is the
            (oversampled) readout, y the phase encode.
        encoded_fov_mm: ``encoding/encodedSpace/fieldOfView_mm`` (x, y, z), mm.
        recon_matrix: ``encoding/reconSpace/matrixSize`` (x, y, z).
        recon_fov_mm: ``encoding/reconSpace/fieldOfView_mm`` (x, y, z), mm.
        ky_center: ``encodingLimits/kspace_encoding_step_1/center``.
        ky_maximum: ``encodingLimits/kspace_encoding_step_1/maximum``.
        num_slices: ``encodingLimits/slice/maximum`` + 1.
    """

    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    flip_angle: float | None = None
    sequence_type: str | None = None
    echo_spacing: float | None = None
    field_strength: float | None = None
    vendor: str | None = None
    model: str | None = None
    receiver_channels: int | None = None
    protocol_name: str | None = None
    encoded_matrix: tuple[int, int, int] | None = None
    encoded_fov_mm: tuple[float, float, float] | None = None
    recon_matrix: tuple[int, int, int] | None = None
    recon_fov_mm: tuple[float, float, float] | None = None
    ky_center: int | None = None
    ky_maximum: int | None = None
    num_slices: int | None = None


# -- writing ------------------------------------------------------------------------------


def build_header(info: HeaderInfo) -> str:
    """Write ``info`` as an ISMRMRD XML document (UTF-8 declared).

    The schema requires an encoding block, so ``encoded_matrix`` and
    ``recon_matrix`` must be given.  Other defaults, chosen so that fastMRI's
    ``SliceDataset`` finds everything it queries:

    * a missing field of view is written as the matrix size in mm (1 mm voxels);
    * ``ky_maximum`` defaults to ``encoded y - 1`` and ``ky_center`` to
      ``encoded y // 2`` (no phase padding: fastMRI's ``padding_left`` = 0);
    * ``H1resonanceFrequency_Hz`` (required) is gamma * B0, or 0 when B0 is unknown;
    * ``measurementInformation`` (whose schema requires ``patientPosition``) is
      written only when ``protocol_name`` is given, with position HFS.

    Args:
        info: The header fields.

    Returns:
        The XML document as a string.

    Raises:
        ValueError: ``encoded_matrix`` or ``recon_matrix`` is missing.
    """
    for name in ("encoded_matrix", "recon_matrix"):
        if getattr(info, name) is None:
            raise ValueError(
                f"build_header needs HeaderInfo.{name} (the ISMRMRD schema requires it)"
            )
    enc_y = int(info.encoded_matrix[1])
    ky_max = enc_y - 1 if info.ky_maximum is None else int(info.ky_maximum)
    ky_center = enc_y // 2 if info.ky_center is None else int(info.ky_center)
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ky_max, center=ky_center),
        slice=(
            None
            if info.num_slices is None
            else xsd.limitType(minimum=0, maximum=int(info.num_slices) - 1, center=0)
        ),
    )
    encoding = xsd.encodingType(
        encodedSpace=_space(info.encoded_matrix, info.encoded_fov_mm),
        reconSpace=_space(info.recon_matrix, info.recon_fov_mm),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    larmor = 0 if info.field_strength is None else round(GAMMA_H1_HZ_PER_T * info.field_strength)
    system = None
    if any(
        v is not None
        for v in (info.vendor, info.model, info.field_strength, info.receiver_channels)
    ):
        system = xsd.acquisitionSystemInformationType(
            systemVendor=info.vendor,
            systemModel=info.model,
            systemFieldStrength_T=_opt_float(info.field_strength),
            receiverChannels=None
            if info.receiver_channels is None
            else int(info.receiver_channels),
        )
    sequence = None
    seq_values = (info.tr, info.te, info.ti, info.flip_angle, info.sequence_type, info.echo_spacing)
    if any(v is not None for v in seq_values):
        sequence = xsd.sequenceParametersType(
            TR=_as_list(info.tr),
            TE=_as_list(info.te),
            TI=_as_list(info.ti),
            flipAngle_deg=_as_list(info.flip_angle),
            sequence_type=info.sequence_type,
            echo_spacing=_as_list(info.echo_spacing),
        )
    measurement = None
    if info.protocol_name is not None:
        measurement = xsd.measurementInformationType(
            patientPosition=xsd.patientPositionType.HFS, protocolName=info.protocol_name
        )
    header = xsd.ismrmrdHeader(
        measurementInformation=measurement,
        acquisitionSystemInformation=system,
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=larmor),
        encoding=[encoding],
        sequenceParameters=sequence,
    )
    return xsd.ToXML(header, encoding="utf-8")


def _space(matrix, fov) -> xsd.encodingSpaceType:
    mx, my, mz = (int(v) for v in matrix)
    fx, fy, fz = (float(v) for v in (fov if fov is not None else (mx, my, mz)))
    return xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=mx, y=my, z=mz),
        fieldOfView_mm=xsd.fieldOfViewMm(x=fx, y=fy, z=fz),
    )


def _as_list(value: float | None) -> list[float]:
    return [] if value is None else [float(value)]


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


# -- parsing ------------------------------------------------------------------------------


def parse_header(xml: str | bytes, path: str | PathLike[str] | None = None) -> HeaderInfo:
    """Read the fields of :class:`HeaderInfo` from an ISMRMRD XML document.

    Args:
        xml: The document (``str`` or ``bytes``, as h5py returns it).
        path: The file it came from, named in errors.

    Returns:
        A :class:`HeaderInfo`; fields the header lacks are ``None``.

    Raises:
        DataFileError: The text is not an ISMRMRD document (``field="ismrmrd_header"``),
            or a value is not a (finite) number (``field`` names its XML path).
    """
    return header_info(parse_document(xml, path), path)


def parse_document(xml: str | bytes, path: str | PathLike[str] | None = None) -> xsd.ismrmrdHeader:
    """The ISMRMRD XML document as ``ismrmrd.xsd`` objects (what the metadata schema's
    :class:`~metamri.metadata.sources.HeaderPath` sources read).

    Values that do not convert to their XML type are kept as text (the readers' checks
    name them).

    Raises:
        DataFileError: The text is not an ISMRMRD document (``field="ismrmrd_header"``).
    """
    if isinstance(xml, bytes | bytearray):
        xml = bytes(xml)
    elif not isinstance(xml, str):
        raise DataFileError(path, f"expected an XML string, got {type(xml).__name__}", field=_FIELD)
    try:
        with warnings.catch_warnings():
            # xsdata warns and keeps the text when a value does not convert; we check later.
            warnings.simplefilter("ignore")
            return xsd.CreateFromDocument(xml)
    except Exception as exc:  # xsdata raises ParserError, TypeError, ValueError ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(
            path, f"not a valid ISMRMRD XML header ({reason})", field=_FIELD
        ) from None


def header_info(hdr: xsd.ismrmrdHeader, path: str | PathLike[str] | None = None) -> HeaderInfo:
    """The :class:`HeaderInfo` of a parsed document (:func:`parse_document`).

    Raises:
        DataFileError: A value is not a (finite) number (``field`` names its XML path).
    """
    checker = _Checker(path)
    seq = hdr.sequenceParameters
    system = hdr.acquisitionSystemInformation
    meas = hdr.measurementInformation
    enc = hdr.encoding[0] if hdr.encoding else None
    limits = enc.encodingLimits if enc is not None else None
    ky_lim = limits.kspace_encoding_step_1 if limits is not None else None
    slice_lim = limits.slice if limits is not None else None
    num_slices = checker.integer(
        slice_lim.maximum if slice_lim else None, "encodingLimits/slice/maximum"
    )

    return HeaderInfo(
        tr=checker.first_number(seq.TR if seq else None, "sequenceParameters/TR"),
        te=checker.first_number(seq.TE if seq else None, "sequenceParameters/TE"),
        ti=checker.first_number(seq.TI if seq else None, "sequenceParameters/TI"),
        flip_angle=checker.first_number(
            seq.flipAngle_deg if seq else None, "sequenceParameters/flipAngle_deg"
        ),
        sequence_type=_text(seq.sequence_type if seq else None),
        echo_spacing=checker.first_number(
            seq.echo_spacing if seq else None, "sequenceParameters/echo_spacing"
        ),
        field_strength=checker.number(
            system.systemFieldStrength_T if system else None,
            "acquisitionSystemInformation/systemFieldStrength_T",
        ),
        vendor=_text(system.systemVendor if system else None),
        model=_text(system.systemModel if system else None),
        receiver_channels=checker.integer(
            system.receiverChannels if system else None,
            "acquisitionSystemInformation/receiverChannels",
        ),
        protocol_name=_text(meas.protocolName if meas else None),
        encoded_matrix=checker.matrix(enc.encodedSpace if enc else None, "encoding/encodedSpace"),
        encoded_fov_mm=checker.fov(enc.encodedSpace if enc else None, "encoding/encodedSpace"),
        recon_matrix=checker.matrix(enc.reconSpace if enc else None, "encoding/reconSpace"),
        recon_fov_mm=checker.fov(enc.reconSpace if enc else None, "encoding/reconSpace"),
        ky_center=checker.integer(
            ky_lim.center if ky_lim else None, "encodingLimits/kspace_encoding_step_1/center"
        ),
        ky_maximum=checker.integer(
            ky_lim.maximum if ky_lim else None, "encodingLimits/kspace_encoding_step_1/maximum"
        ),
        num_slices=None if num_slices is None else num_slices + 1,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


class _Checker:
    """Turns parsed values into numbers, raising a DataFileError that names the XML path."""

    def __init__(self, path: str | PathLike[str] | None) -> None:
        self.path = path

    def _fail(self, where: str, value: Any, problem: str) -> DataFileError:
        return DataFileError(self.path, problem, field=f"{_FIELD}/{where}", value=value)

    def number(self, value: Any, where: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(where, value, "not a number")
        if not math.isfinite(value):
            raise self._fail(where, value, "not a finite number")
        return float(value)

    def first_number(self, values: list[Any] | None, where: str) -> float | None:
        if not values:
            return None
        return self.number(values[0], where)

    def integer(self, value: Any, where: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(where, value, "not an integer")
        return int(value)

    def matrix(self, space: Any, where: str) -> tuple[int, int, int] | None:
        if space is None or space.matrixSize is None:
            return None
        m = space.matrixSize
        return tuple(self.integer(getattr(m, a), f"{where}/matrixSize/{a}") for a in "xyz")

    def fov(self, space: Any, where: str) -> tuple[float, float, float] | None:
        if space is None or space.fieldOfView_mm is None:
            return None
        f = space.fieldOfView_mm
        return tuple(self.number(getattr(f, a), f"{where}/fieldOfView_mm/{a}") for a in "xyz")
