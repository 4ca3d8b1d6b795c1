# No provider on purpose: everything here is computed from inputs, so this module
# can be initialised, validated and tested where no provider can be downloaded.
terraform {
  required_version = ">= 1.9.0, < 2.0.0"
}
