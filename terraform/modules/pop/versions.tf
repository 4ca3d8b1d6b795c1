terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    linode = {
      source  = "linode/linode"
      version = "~> 2.34"
    }
  }
}
