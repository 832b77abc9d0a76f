from .utils import DALEEvents, DALEKeys

__all__ = ["DALEEvents", "DALEKeys"]
