//! `agentmesh crds`: the CRDs generated from `agentmesh-api`.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct CrdsArgs {
    /// Write one `<plural>.<group>.yaml` per kind into this directory instead of printing a
    /// multi-document stream on standard output.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

pub fn run(args: &CrdsArgs) -> anyhow::Result<()> {
    match &args.output_dir {
        None => {
            let yaml = agentmesh_api::crd::all_to_yaml().context("rendering the CRDs")?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
        }
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for generated in agentmesh_api::crd::all() {
                let path = dir.join(&generated.file_name);
                let yaml = agentmesh_api::crd::to_yaml(&generated.crd)
                    .with_context(|| format!("rendering {}", generated.file_name))?;
                fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
