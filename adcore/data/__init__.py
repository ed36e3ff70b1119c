"""Loading and validating image sets (folders, zips, MVTec AD layout) without trusting any file.

``records`` (what a set is), ``decoding`` (one image or mask file), ``layout`` (finding the set in a
folder, the folder walker), ``archives`` (zips), ``uploads`` (uploaded files, allowed server folders).
The names the app, the CLI and the tests use are importable from here (``adcore.data.load_image``).
"""

from adcore.data.records import (  # noqa: F401
    ImageRecord,
    ImageSet,
    SkippedFile,
)
from adcore.data.decoding import (  # noqa: F401
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    ImageError,
    load_image,
    load_images,
    load_mask,
)
from adcore.data.layout import (  # noqa: F401
    open_image_set,
)
from adcore.data.archives import (  # noqa: F401
    MAX_ZIP_FILES,
    MAX_ZIP_TOTAL_BYTES,
    extract_zip,
)
from adcore.data.uploads import (  # noqa: F401
    DATA_ROOTS_ENV,
    allowed_data_roots,
    allowed_path,
    save_uploads,
)
