"""The DICOM series geometry, pixel decoding and resampling that ``data_prep`` and ``dale_monai predict`` share:
slice order, tilt, uneven spacing, missing slices and their messages; the Modality LUT and MONOCHROME1; resampling
onto a regular grid, checked on intensities that are a linear function of position (which linear interpolation
reproduces exactly)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_datasets import pixel_positions, tilted_orientation, write_dicom_slices

from data_prep.dicom_geometry import GRID_TOLERANCE, LPS_TO_RAS, GeometryError, analyze_series
from data_prep.dicom_pixels import decode_pixels, modality_range
from data_prep.dicom_resample import regular_grid, resample_to_grid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SPACING = (0.8, 0.7)  # between rows, between columns
ROWS, COLS = 6, 5


def _headers(positions, orientation=AXIAL, spacing=SPACING, rows=ROWS, cols=COLS, **extra) -> list[dict]:
    return [{"Rows": rows, "Columns": cols, "PixelSpacing": list(spacing), "ImageOrientationPatient": list(orientation),
             "ImagePositionPatient": list(map(float, p)), "InstanceNumber": k + 1, **extra}
            for k, p in enumerate(positions)]


def _z_positions(gaps, origin=(-10.0, 20.0, 30.0)) -> np.ndarray:
    z = np.concatenate([[0.0], np.cumsum(gaps)])
    return np.asarray(origin) + np.outer(z, [0.0, 0.0, 1.0])


def _shuffled(headers: list, seed: int = 0) -> tuple[list, list[str], np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(headers))
    return [headers[i] for i in perm], [f"s{i:02d}.dcm" for i in perm], perm


def _voxel_to_lps_all(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return (affine[:3, :3] @ idx.T).T + affine[:3, 3]


# --------------------------------------------------------------------------------------------- regular
def test_regular_series_is_ordered_by_position_whatever_the_file_order():
    headers, names, perm = _shuffled(_headers(_z_positions([2.5] * 5)))
    g = analyze_series(headers, names)
    assert list(g.names) == [f"s{k:02d}.dcm" for k in range(6)]
    assert [int(perm[i]) for i in g.order] == list(range(6))
    assert g.orthogonal_regular and g.has_affine and not g.tilted and g.problems == ()
    assert g.tilt_deg == 0 and g.max_misplacement_mm == 0
    expected = np.array([[0.7, 0, 0, -10.0], [0, 0.8, 0, 20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(g.affine_lps(), expected, atol=1e-12)
    np.testing.assert_allclose(g.affine_ras(), LPS_TO_RAS @ expected)
    np.testing.assert_allclose(g.slice_extents(), [2.5] * 6)
    assert g.describe() == "regular: 6 slice(s), 2.50 mm apart"


def test_jitter_below_the_tolerance_is_regular_and_the_affine_spans_the_ends():
    jitter = np.random.default_rng(1).uniform(-0.02, 0.02, 9)  # 0.02 mm on a 3 mm step: under 5 %
    g = analyze_series(*_shuffled(_headers(_z_positions(3.0 + jitter)))[:2])
    assert g.orthogonal_regular
    np.testing.assert_allclose(g.affine_lps()[2, 2], (3.0 * 9 + jitter.sum()) / 9)


# --------------------------------------------------------------------------------------------- tilt
@pytest.mark.parametrize("axis", ["row", "column"])
@pytest.mark.parametrize("degrees", [15.0, 5.0, -22.5, 30.0])
def test_gantry_tilt_gets_its_exact_sheared_affine(degrees, axis):
    """Slices tilted about either in-plane axis, positions stepping straight along z by 2 mm (the issue's case is
    15 degrees about the row axis): the tilt is found, and the affine puts every pixel of every slice where DICOM
    says it is."""
    orientation = tilted_orientation(degrees, axis)
    positions = _z_positions([2.0] * 7)
    g = analyze_series(*_shuffled(_headers(positions, orientation))[:2])
    assert g.kinds == ("gantry_tilt",) and g.tilted and g.has_affine and not g.orthogonal_regular
    assert g.tilt_deg == pytest.approx(abs(degrees), abs=1e-9)
    assert f"gantry tilt of {abs(degrees):.2f} degrees" in g.describe()
    assert g.max_misplacement_mm == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(g.gaps, 2.0 * np.cos(np.radians(degrees)))
    affine = g.affine_lps()
    for k, position in enumerate(positions):
        want = pixel_positions(position, orientation, SPACING, ROWS, COLS)  # (rows, cols, 3)
        c, r = np.meshgrid(np.arange(COLS), np.arange(ROWS), indexing="xy")
        got = np.einsum("ij,rcj->rci", affine[:3, :3], np.stack([c, r, np.full_like(c, k)], -1)) + affine[:3, 3]
        np.testing.assert_allclose(got, want, atol=1e-9)
    cos = abs(affine[:3, 2] @ affine[:3, 1]) / np.linalg.norm(affine[:3, 2]) / np.linalg.norm(affine[:3, 1]) + \
        abs(affine[:3, 2] @ affine[:3, 0]) / np.linalg.norm(affine[:3, 2]) / np.linalg.norm(affine[:3, 0])
    assert cos > 0.05  # sheared, not orthogonal


def test_a_tilt_too_small_to_move_a_slice_by_5_percent_of_a_pixel_is_no_tilt():
    drift = 0.5 * GRID_TOLERANCE * SPACING[0]  # total in-plane drift over the stack, mm
    positions = _z_positions([2.0] * 4)
    positions[:, 1] += np.linspace(0, drift, 5)
    assert analyze_series(_headers(positions), [f"{k}" for k in range(5)]).orthogonal_regular


# --------------------------------------------------------------------------------------------- irregular
def test_uneven_spacing_names_the_values_the_slices_and_the_misplacement():
    """The issue's series: 11 gaps of 2.0 mm then 12 of 2.8 mm. A uniform affine (2.417 mm) misplaces slice 11 by
    4.59 mm; no affine is given."""
    headers, names, _ = _shuffled(_headers(_z_positions([2.0] * 11 + [2.8] * 12)))
    g = analyze_series(headers, names)
    assert g.kinds == ("uneven_spacing",) and not g.has_affine and not g.tilted
    text = g.describe()
    assert "uneven slice spacing (2.00 to 2.80 mm)" in text
    assert "11 gap(s) of 2.00 mm (slices 0-11: s00.dcm .. s11.dcm)" in text
    assert "then 12 gap(s) of 2.80 mm (slices 11-23: s11.dcm .. s23.dcm)" in text
    assert "one spacing of 2.417 mm would misplace slices by up to 4.59 mm" in text
    assert g.max_misplacement_mm == pytest.approx(11 * (55.6 / 23 - 2.0))
    with pytest.raises(GeometryError, match="no affine holds the 24 slices s00.dcm .. s23.dcm: uneven slice spacing"):
        g.affine_lps()
    extents = g.slice_extents()
    assert extents[0] == 2.0 and extents[11] == pytest.approx(2.4) and extents[-1] == pytest.approx(2.8)
    assert extents.sum() == pytest.approx(55.6 + 1.0 + 1.4)
    # a nominal affine exists for slice-by-slice bookkeeping: exact in-plane, median gap along the normal
    np.testing.assert_allclose(g.nominal_affine_lps()[:3, :2], [[0.7, 0], [0, 0.8], [0, 0]])
    assert g.nominal_affine_lps()[2, 2] == pytest.approx(2.8)


@pytest.mark.parametrize("dropped, count", [((4,), "1 between s03.dcm and s05.dcm (a gap of 5.00 mm)"),
                                            ((4, 5), "2 between s03.dcm and s06.dcm (a gap of 7.50 mm)")])
def test_missing_slices_are_named_with_the_gap(dropped, count):
    positions = _z_positions([2.5] * 9)
    kept = [k for k in range(10) if k not in dropped]
    g = analyze_series(_headers(positions[kept]), [f"s{k:02d}.dcm" for k in kept])
    assert g.kinds == ("missing_slices",) and not g.has_affine
    assert g.describe() == f"missing slices where the spacing is 2.50 mm: {count}"


def test_uneven_and_tilted_together_and_positions_off_a_line():
    orientation = tilted_orientation(10.0)
    g = analyze_series(_headers(_z_positions([2.0, 2.0, 3.0, 3.0]), orientation), list("abcde"))
    assert set(g.kinds) == {"gantry_tilt", "uneven_spacing"} and not g.has_affine
    positions = _z_positions([2.0] * 5)
    positions[3, 0] += 1.0  # one slice shifted 1 mm sideways
    g = analyze_series(_headers(positions), list("abcdef"))
    assert "off_line" in g.kinds and not g.has_affine
    assert "slice positions off a straight line: d lies 1.00 mm in-plane" in g.describe()


def test_slices_that_form_no_stack_raise():
    with pytest.raises(GeometryError, match=r"b and a share one slice position|a and b share one slice position"):
        analyze_series(_headers(_z_positions([0.0, 2.0])), list("abc"))
    with pytest.raises(GeometryError, match="slices of mixed orientations"):
        analyze_series(_headers(_z_positions([2.0]))[:1] + _headers(_z_positions([2.0]), tilted_orientation(5))[1:],
                       list("ab"))
    with pytest.raises(GeometryError, match=r"slices of mixed sizes: 6x5 \(a\), 7x5 \(b\)"):
        analyze_series(_headers(_z_positions([2.0]))[:1] + _headers(_z_positions([2.0]), rows=7)[1:], list("ab"))
    with pytest.raises(GeometryError, match="slices of mixed PixelSpacing"):
        analyze_series(_headers(_z_positions([2.0]))[:1] + _headers(_z_positions([2.0]), spacing=(1, 1))[1:],
                       list("ab"))


def test_without_positions_slices_follow_instance_number():
    headers = [{"Rows": 4, "Columns": 3, "InstanceNumber": n, "SliceThickness": 1.5} for n in (3, 1, 2)]
    g = analyze_series(headers, ["c", "a", "b"])
    assert g.names == ("a", "b", "c") and g.order == (1, 2, 0) and g.has_affine
    np.testing.assert_allclose(g.affine_lps(), np.diag([1.0, 1.0, 1.5, 1.0]))
    with pytest.raises(GeometryError, match=r"InstanceNumber jumps from 1 in a to 3 in c"):
        analyze_series([headers[0], headers[1]], ["c", "a"])


# --------------------------------------------------------------------------------------------- resampling
def _linear(points: np.ndarray) -> np.ndarray:
    """Intensity as a linear function of LPS position: reproduced exactly by linear interpolation."""
    return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2] + 100.0


@pytest.mark.parametrize("case", ["tilt15_row", "tilt20_column", "uneven", "missing"])
def test_resampling_onto_a_regular_grid_reproduces_a_linear_field(case):
    rows, cols = 12, 10
    orientation, gaps = AXIAL, [2.0] * 8
    if case == "tilt15_row":
        orientation = tilted_orientation(15.0, "row")
    elif case == "tilt20_column":
        orientation = tilted_orientation(20.0, "column")
    elif case == "uneven":
        gaps = [2.0] * 4 + [2.8] * 4
    else:
        gaps = [2.0] * 3 + [4.0] + [2.0] * 3
    positions = _z_positions(gaps)
    g = analyze_series(_headers(positions, orientation, rows=rows, cols=cols), [f"{k}" for k in range(len(positions))])
    # the series as read: (columns, rows, slices) in slice order
    volume = np.stack([_linear(pixel_positions(p, orientation, SPACING, rows, cols)).T for p in positions], -1)
    grid = regular_grid(g)
    affine = grid.affine_lps
    np.testing.assert_allclose(affine[:3, :3].T @ affine[:3, :3], np.diag(np.square(grid.spacing)), atol=1e-12)
    assert grid.spacing[2] <= min(np.diff(g.along)) + 1e-9
    assert grid.shape[2] == round(g.along[-1] / grid.spacing[2]) + 1  # first to last slice exactly
    out = resample_to_grid(volume, g, grid, fill=-1e6)
    want = _linear(_voxel_to_lps_all(affine, grid.shape)).reshape(grid.shape)
    inside = out > -1e5  # grid voxels between two slices' footprints (a tilted stack leaves corners empty)
    if "tilt" in case:  # grid slices are the source planes, each holding at least a slice's interior
        assert grid.shape[2] == len(positions) and (inside.sum(axis=(0, 1)) >= (rows - 1) * (cols - 1)).all()
    else:
        assert inside.all()
    np.testing.assert_allclose(out[inside], want[inside], rtol=0, atol=1e-3)
    # the first and last grid slices are the first and last source slices' planes
    first, last = (np.linalg.inv(affine) @ np.append(p, 1) for p in (positions[0], positions[-1]))
    assert first[2] == pytest.approx(0, abs=1e-9) and (first[:2] >= -1e-9).all()
    assert last[2] == pytest.approx(grid.shape[2] - 1)
    if case == "tilt15_row":
        assert "gantry tilt of 15.00 degrees" in grid.describe(g)


def test_resampling_refuses_a_grid_a_tiny_gap_would_blow_up():
    g = analyze_series(_headers(_z_positions([2.0, 0.1, 2.0, 2.0])), list("abcde"))
    with pytest.raises(GeometryError, match=r"resampling at the smallest gap \(0.100 mm\) would need 62 slices"):
        regular_grid(g)


# --------------------------------------------------------------------------------------------- decoding
def _decoded(tmp_path, stored, **kwargs) -> list[np.ndarray]:
    import pydicom

    slices = write_dicom_slices(tmp_path, stored, _z_positions([2.0] * (len(stored) - 1)), **kwargs)
    return [decode_pixels(pydicom.dcmread(s["path"])) for s in slices]


def _lesion_stack(low: int, high: int, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    lesion = np.zeros((n, ROWS, COLS), bool)
    lesion[:, 2:4, 1:3] = True
    return np.where(lesion, high, low).astype(np.int32), lesion


@pytest.mark.parametrize("slope, intercept", [(None, None), (1.0, -1024.0), (2.0, -1024.0), (0.5, 10.0)])
def test_monochrome1_is_inverted_within_the_modality_range_so_the_lesion_is_bright(tmp_path, slope, intercept):
    """A MONOCHROME1 slice stores a bright lesion as low values; decoded it is high: ``lo + hi - rescale(s)``
    with ``[lo, hi]`` the rescaled 12-bit range, which is ``rescale(4095 - s)`` (what ITK/GDCM gives)."""
    stored, lesion = _lesion_stack(low=3000, high=200)
    slices = _decoded(tmp_path, stored, photometric="MONOCHROME1", slope=slope, intercept=intercept,
                      bits_stored=12, signed=False)
    m, b = (1.0, 0.0) if slope is None else (slope, intercept)
    for k, values in enumerate(slices):
        assert values.dtype == np.float32 and values.shape == (ROWS, COLS)
        np.testing.assert_allclose(values, m * (4095 - stored[k]) + b)
        assert values[lesion[k]].min() > values[~lesion[k]].max()


def test_monochrome2_rescale_and_a_signed_monochrome1(tmp_path):
    stored, lesion = _lesion_stack(low=24, high=1100)
    a, b = tmp_path / "m2", tmp_path / "m1s"
    values = _decoded(a, stored, slope=1.0, intercept=-1024.0)
    np.testing.assert_array_equal(values[0], stored[0] - 1024.0)  # Hounsfield units
    signed = _decoded(b, -stored, photometric="MONOCHROME1", bits_stored=16, signed=True)
    # signed 16 bit: [lo, hi] = [-32768, 32767], so v' = -1 - s
    np.testing.assert_array_equal(signed[0], -1.0 + stored[0])
    assert signed[0][lesion[0]].min() > signed[0][~lesion[0]].max()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_modality_lut_table_is_applied(tmp_path, photometric):
    table = (np.arange(256) * 3 + 7).astype(np.uint16)  # 7, 10, ... 772
    stored = np.array([[[0, 10, 255, 300]] * 2], dtype=np.int32).reshape(1, 2, 4)
    stored = np.concatenate([stored, stored])
    import pydicom

    slices = write_dicom_slices(tmp_path, stored, _z_positions([2.0]), photometric=photometric,
                                modality_lut=(0, table), bits_stored=12, signed=False)
    ds = pydicom.dcmread(slices[0]["path"])
    assert modality_range(ds) == (7.0, 772.0)
    values = decode_pixels(ds)
    mapped = np.array([7.0, 37.0, 772.0, 772.0])  # past the table: its last entry
    np.testing.assert_array_equal(values[0], mapped if photometric == "MONOCHROME2" else 779.0 - mapped)


def test_decoding_refuses_colour_and_names_the_file(tmp_path):
    import pydicom

    from data_prep.io import DataPrepError

    slices = write_dicom_slices(tmp_path, np.zeros((1, 2, 2), np.int32), [(0, 0, 0)])
    ds = pydicom.dcmread(slices[0]["path"])
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(DataPrepError, match=rf"{slices[0]['path'].name}: only single-frame greyscale"):
        decode_pixels(ds)


def test_itk_decodes_unsigned_monochrome1_as_this_module_does(tmp_path):
    """MONAI's ITK reader (GDCM) inverts unsigned MONOCHROME1 as ``(2^BitsStored - 1) - s`` before the rescale: the
    same values as :func:`decode_pixels`, so the convention chosen here is the one ITK users already see."""
    pytest.importorskip("itk")
    from monai.transforms import LoadImage

    stored, _ = _lesion_stack(low=3000, high=200, n=3)
    slices = write_dicom_slices(tmp_path, stored, _z_positions([2.0] * 2), photometric="MONOCHROME1", slope=2.0,
                                intercept=-1024.0, bits_stored=12, signed=False)
    itk = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(tmp_path)))  # (columns, rows, slices)
    import pydicom

    ours = np.stack([decode_pixels(pydicom.dcmread(s["path"])).T for s in slices], -1)
    np.testing.assert_array_equal(itk, ours)
