"""Images in and out of the watermarking library, each concern in its own module:

* `filigree.imaging.decode`: bytes -> ``DecodedImage`` (native pixels plus the metadata to
  write them back), with the input policies;
* `filigree.imaging.encode`: marked pixels -> bytes in the source's format;
* `filigree.imaging.kernels`: the working-size view, residual upsampling and ``add_residual``;
* `filigree.imaging.metrics`: PSNR and SSIM;
* `filigree.imaging.pixels`: numpy views of Pillow's memory and dtype conversions.
"""
