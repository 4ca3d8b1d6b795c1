# The API token comes from the LINODE_TOKEN environment variable, never from a file here.
provider "linode" {}
