"""Image and artefact IO. The only place where SimpleITK (X, Y, Z) order meets numpy (Z, Y, X)."""

from autoseg.io.images import Geometry, read_image, read_case, write_image, read_dicom_series, is_dicom_folder
from autoseg.io.json_io import load_json, save_json, dataclass_from_dict

__all__ = ["Geometry", "read_image", "read_case", "write_image", "read_dicom_series", "is_dicom_folder",
           "load_json", "save_json", "dataclass_from_dict"]
