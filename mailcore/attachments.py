"""Attachments and inline images a caller sends with a message: the rules for each file.

A file is ``{filename, content (base64), content_type, content_id?, disposition?}``. Refused
(422, naming the field): a file name that could point elsewhere or mislead a reader (path
separators, ``..``, control characters and NUL, bidirectional overrides such as U+202E that make
``invoice‮fdp.exe`` read as ``invoice…exe.pdf``, trailing dots or spaces, more than
:data:`MAX_FILENAME` characters); an executable by its type, by its name's extension (whatever
type is claimed) or by its first bytes (``MZ``, ELF, Mach-O, Java class, ``#!``); content that is
not strict base64; an inline part without a ``content_id`` or that is not an image. Sizes are
checked against the service's limits by :mod:`mailcore.validation` (413).
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

#: Files one message may carry (the configured limit may be lower).
MAX_ATTACHMENTS = 20
#: Longest file name, in characters.
MAX_FILENAME = 200

#: Types that are programs or scripts a mail client may run.
DENIED_TYPES = frozenset({
    "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
    "application/x-executable", "application/x-elf", "application/x-mach-binary",
    "application/vnd.microsoft.portable-executable", "application/x-msi",
    "application/x-ms-installer",
    "application/x-sh", "application/x-csh", "application/x-bat", "application/x-msbatch",
    "application/java-archive", "application/x-java-archive", "application/java-vm",
    "application/x-java-applet", "application/hta", "application/x-ms-shortcut",
    "application/vnd.android.package-archive", "application/x-apple-diskimage",
    "application/x-powershell", "text/x-shellscript", "text/x-python", "text/javascript",
    "application/javascript", "application/x-javascript", "text/vbscript", "text/x-vbscript",
    "application/x-vbscript", "application/x-ms-application", "application/x-silverlight-app",
})
#: Extensions of programs and scripts (checked whatever type is claimed).
DENIED_EXTENSIONS = frozenset({
    "exe", "com", "bat", "cmd", "scr", "pif", "cpl", "msi", "msp", "mst", "dll", "sys", "drv",
    "ocx", "js", "jse", "vbs", "vbe", "wsf", "wsh", "ws", "wsc", "ps1", "ps1xml", "ps2", "psc1",
    "psm1", "msh", "hta", "lnk", "inf", "reg", "scf", "jar", "class", "sh", "bash", "csh", "ksh",
    "command", "app", "apk", "dmg", "pkg", "run", "bin", "elf", "appx", "appxbundle", "msix",
    "gadget", "application", "vb", "vba", "ade", "adp", "chm", "hlp", "iso", "img", "vhd",
    "vhdx", "url", "xll", "xlam", "docm", "xlsm", "pptm", "library-ms", "settingcontent-ms",
})
#: First bytes of executables.
_MAGIC = (b"MZ", b"\x7fELF", b"\xca\xfe\xba\xbe", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf",
          b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"#!")
_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
#: Bidirectional controls (U+202E makes a name read backwards) and invisible marks.
_BIDI = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def _filename(value: str) -> str:
    name = unicodedata.normalize("NFC", value)
    if _CONTROL.search(name):
        raise ValueError("must not contain control characters (NUL, CR, LF, …)")
    if _BIDI.search(name):
        raise ValueError("must not contain bidirectional or invisible formatting characters")
    if "/" in name or "\\" in name or name in {".", ".."} or name.startswith(".."):
        raise ValueError("must be a plain file name (no path, no '..')")
    if not name.strip() or name != name.strip() or name.endswith("."):
        raise ValueError("must not be blank, start or end with a space, or end with a dot")
    if len(name) > MAX_FILENAME:
        raise ValueError(f"at most {MAX_FILENAME} characters")
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension in DENIED_EXTENSIONS:
        raise ValueError(f"executable files (.{extension}) may not be attached")
    return _SPACE.sub(" ", name)


class AttachmentIn(BaseModel):
    """One file as the caller sends it (``content`` in base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: Annotated[str, Field(min_length=1, max_length=4 * MAX_FILENAME)]
    content: str = Field(description="The file, base64 (standard alphabet, padded)")
    content_type: Annotated[str, Field(max_length=200)]
    content_id: str | None = Field(default=None, description="For inline images: src=\"cid:…\"")
    disposition: Literal["attachment", "inline"] = "attachment"
    _size: int = PrivateAttr(default=0)

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str) -> str:
        return _filename(value)

    @field_validator("content_type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        kind = value.strip().lower()
        if not _TYPE.fullmatch(kind):
            raise ValueError("must be a MIME type such as application/pdf (no parameters)")
        if kind in DENIED_TYPES:
            raise ValueError(f"executable types ({kind}) may not be attached")
        return kind

    @field_validator("content_id")
    @classmethod
    def _check_content_id(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_ID.fullmatch(value):
            raise ValueError("letters, digits, '.', '_', '@', '-' only (at most 100)")
        return value

    @field_validator("content")
    @classmethod
    def _check_content(cls, value: str) -> str:
        try:
            head = binascii.a2b_base64(value[:12].encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError(
                "must be base64 (standard alphabet, padded, no line breaks)") from None
        if head.startswith(_MAGIC):
            raise ValueError("executable content may not be attached")
        return value

    @model_validator(mode="after")
    def _check_inline_and_size(self) -> AttachmentIn:
        try:
            self._size = len(decode(self.content))
        except ValueError as exc:
            raise ValueError(f"content: {exc}") from None
        if self.disposition == "inline":
            if not self.content_id:
                raise ValueError("an inline file needs a content_id (referenced as cid:…)")
            if not self.content_type.startswith("image/"):
                raise ValueError("inline files must be images")
        return self

    @property
    def size(self) -> int:
        """Bytes once decoded."""
        return self._size


def decode(content: str) -> bytes:
    """The file's bytes; ``ValueError`` when ``content`` is not strict base64."""
    try:
        return binascii.a2b_base64(content.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("must be base64 (standard alphabet, padded, no line breaks)") from None
