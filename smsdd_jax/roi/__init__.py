"""Find the phone's front face in a camera frame and rectify it (paper, 3.1).

The paper finds the phone screen in the raw camera frame with the Hough
transform and warps it to 110 x 230. This package keeps that Hough core and
makes it robust on the real frames: black phones (dark glass) on a dark grey
textured mat with uneven light, white phones (white bezel, sometimes a chrome
rim), shadows and colour fringes along the outline, reflections, oil drops.

  1. `work`: downscale to 960 px wide, grayscale, 5x5 Gaussian blur. The
     mat's gray level is read along the frame's outermost pixels, per border
     (the light is uneven), where a phone touching a border is patched over
     by interpolation. Canny thresholds come from the mat texture's gradient
     level on the border ring.
  2. `lines`: Canny, `cv2.HoughLinesP`; segments split into near-horizontal
     and near-vertical families and grouped by polarity into lines, each
     measured by its edge support.
  3. `hough`: lines with phone inside and mat outside are candidate sides;
     the first phone-shaped combination of four by rank wins (a frame edge
     may serve where the phone's rounded corners end there; a phone running
     off the frame is refused as cut off); each side is refit to the
     phone's outer boundary and the sides are intersected.
  4. `contour`: only where Hough fails, the largest "not mat" region, its
     four sides fitted and checked to follow image edges.
  5. `geometry`: quads and lines, and `check_quad`, the phone-shape check
     every outline passes; `api`: the functions below.

`find_screen_with_info` says which method served a frame. Corners are
float32 (x, y) in full-resolution pixel coordinates (pixel centres at
integers), ordered tl, tr, br, bl.

A contact sheet for eyeballing (per-frame method and timing):
  python launch/roi_sheet.py --input=DIR --sheet=out.png
"""
from smsdd_jax.roi.api import (ROI_SIZE, ScreenInfo, find_screen,
                               find_screen_contour, find_screen_with_info,
                               rectify)
from smsdd_jax.roi.geometry import (ScreenNotFoundError, order_corners,
                                    quad_iou)

__all__ = ['ROI_SIZE', 'ScreenInfo', 'ScreenNotFoundError', 'find_screen',
           'find_screen_contour', 'find_screen_with_info', 'order_corners',
           'quad_iou', 'rectify']
